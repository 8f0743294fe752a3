"""AlignGPT on the data side: one indicator placeholder right after BOS of every sample with an image.

As AlignGPT's `prepare_inputs_labels_for_multimodal` + forward: the indicator is inserted at index 1
(after the first token), its label is ignored, text-only samples get none, and a sample is cut
one token earlier to make room for it (their `tokenizer_model_max_length - N_INDICATOR_TOKEN`).
In pretraining the level is the record's integer field (`similarity` in their
`blip_laion_cc_sbu_558k_with_similarity_number.json`); otherwise the model's gate computes it.
The batch gets `align_level` [L] per row: -1 everywhere except at indicator positions
(see vlm_jax/models/aligngpt.py).
"""

from __future__ import annotations

import numpy as np

from vlm_jax.config import NO_INDICATOR
from vlm_jax.data.errors import SkipExample


def record_level(fields: dict, field: str, num_indicators: int) -> int:
    """The pretraining level of a record: an int in [0, num_indicators)."""
    value = fields.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_indicators:
        raise SkipExample("malformed_record",
                          f"AlignGPT needs an integer '{field}' in [0, {num_indicators}), got {value!r}")
    return value


def example_level(fields: dict, has_image: bool, field: str, num_indicators: int) -> int:
    """-1 (no indicator: text-only), the record's level (field given), or num_indicators (gate)."""
    if not has_image:
        return NO_INDICATOR
    return record_level(fields, field, num_indicators) if field else num_indicators


def insert_indicator(tokens: np.ndarray, label_mask: np.ndarray, level: int, indicator_token_id: int):
    """Put the unsupervised indicator placeholder at index 1 (right after BOS) when level >= 0."""
    if level < 0:
        return tokens, label_mask
    tokens = np.concatenate([tokens[:1], np.asarray([indicator_token_id], tokens.dtype), tokens[1:]])
    label_mask = np.concatenate([label_mask[:1], np.zeros(1, bool), label_mask[1:]])
    return tokens, label_mask


def drop_indicator(tokens: np.ndarray, label_mask: np.ndarray, level: int, n_images: int):
    """Truncation cut away every image: the sample is text-only now and loses its indicator."""
    if level < 0 or n_images > 0:
        return tokens, label_mask, level
    return np.delete(tokens, 1), np.delete(label_mask, 1), NO_INDICATOR


def row_levels(examples: list[dict], seq_len: int) -> np.ndarray:
    """`align_level` of one packed row: the example's level at its index 1, -1 elsewhere."""
    out = np.full(seq_len, NO_INDICATOR, np.int32)
    pos = 0
    for ex in examples:
        if ex["align_level"] >= 0:
            out[pos + 1] = ex["align_level"]
        pos += len(ex["tokens"])
    return out
