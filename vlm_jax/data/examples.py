"""One raw record -> one model-ready example (tokens with image placeholders, label mask, crops).

Runs in the pipeline's worker threads. Every problem raises `SkipExample(reason)`; the cheap checks
(structure, roles, tags, length) come before the expensive one (image decoding).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from vlm_jax.config import NO_INDICATOR
from vlm_jax.data import aligngpt, interleaved, templates
from vlm_jax.data import images as img_lib
from vlm_jax.data.errors import SkipExample
from vlm_jax.data.sources import RawRecord, parse_record
from vlm_jax.image_layout import crops_for_tiling
from vlm_jax.tokenizer import IMAGE_MARKER, IMAGE_TOKEN

TOO_LONG_MODES = ("truncate", "drop")  # data.too_long: cut at seq_len (never inside an image) | skip

# (conversations) -> (tokens int32[T] with IMAGE_MARKER per image, label_mask bool[T][, sequence index int[T]
# when the example is several sequences: interleaved caption_sequences])
EncodeFn = Callable[[list], tuple]


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    seq_len: int
    max_images: int
    tokens_per_image: int  # N
    image_token_id: int
    too_long: str = "truncate"  # truncate | drop
    aspect: str = "pad"
    image_size: int = 336
    mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073)
    tiling: str = "none"
    resample: str = "bicubic"
    max_pixels: int = img_lib.DEFAULT_MAX_PIXELS
    indicator_token_id: Optional[int] = None  # AlignGPT: indicator placeholder after BOS; None = off
    align_level_field: str = ""  # AlignGPT pretraining: the record field holding the level
    num_indicators: int = 8
    image_budget_order: str = "document"  # interleaved.BUDGET_ORDERS


def expand_images(tokens: np.ndarray, label_mask: np.ndarray, n: int, image_token_id: int):
    """Replace every IMAGE_MARKER by n copies of image_token_id (unsupervised).

    Returns tokens, label_mask and the start position of every image run."""
    where = np.flatnonzero(tokens == IMAGE_MARKER)
    if len(where) == 0:
        return tokens, label_mask, np.zeros(0, np.int64)
    counts = np.where(tokens == IMAGE_MARKER, n, 1)
    out_tokens = np.repeat(np.where(tokens == IMAGE_MARKER, image_token_id, tokens), counts).astype(np.int32)
    out_mask = np.repeat(label_mask & (tokens != IMAGE_MARKER), counts)
    starts = np.cumsum(counts)[where] - n
    return out_tokens, out_mask, starts


def truncate(tokens, label_mask, starts, n: int, seq_len: int):
    """Cut to seq_len without splitting an image run; returns tokens, mask, number of images kept."""
    cut = seq_len
    kept = int(np.sum(starts + n <= cut))
    if kept < len(starts):
        cut = min(cut, int(starts[kept]))
    return tokens[:cut], label_mask[:cut], kept


def build_example(raw: RawRecord, encode: EncodeFn, spec: ExampleSpec) -> dict:
    """RawRecord -> {"tokens", "label_mask", "images" [n,K,S,S,3] uint8, "id", "truncated"}."""
    rec = parse_record(raw)
    if isinstance(rec.conversations, interleaved.Document):
        rec = _document_images(rec, spec.max_images, spec.image_budget_order)
        n_tags = rec.conversations.num_images
    else:
        try:
            templates.to_turns(rec.conversations)  # LLaVA's conversation rules, before anything costly
        except templates.TemplateError as e:
            raise SkipExample(e.reason, str(e)) from None
        n_tags = sum(t["value"].count(IMAGE_TOKEN) for t in rec.conversations)
    n_images = len(rec.image_bytes) if rec.image_bytes is not None else len(rec.image_paths)
    if n_tags != n_images:
        raise SkipExample("image_tag_mismatch", f"{n_tags} <image> tags, {n_images} images")
    if rec.image_bytes is None:
        for p in rec.image_paths:  # before tokenizing: cheap and a security check
            img_lib.resolve_path(raw.image_folder, p)
    try:
        enc = encode(rec.conversations)
    except (ValueError, KeyError, AssertionError) as e:
        raise SkipExample("template_error", str(e)) from None
    tokens = np.asarray(enc[0], np.int64)
    label_mask = np.asarray(enc[1], bool)
    sequences = np.asarray(enc[2], np.int32) if len(enc) > 2 and enc[2] is not None else None
    if int(np.sum(tokens == IMAGE_MARKER)) != n_images:
        raise SkipExample("template_error", "the template changed the number of <image> markers")

    level = NO_INDICATOR
    if spec.indicator_token_id is not None:
        level = aligngpt.example_level(rec.fields, n_images > 0, spec.align_level_field, spec.num_indicators)
        tokens, label_mask = aligngpt.insert_indicator(tokens, label_mask, level, spec.indicator_token_id)

    n = spec.tokens_per_image
    if sequences is not None:
        sequences = np.repeat(sequences, np.where(tokens == IMAGE_MARKER, n, 1))
    tokens, label_mask, starts = expand_images(tokens, label_mask, n, spec.image_token_id)
    truncated = len(tokens) > spec.seq_len
    if truncated:
        if spec.too_long == "drop":
            raise SkipExample("too_long", f"{len(tokens)} tokens > seq_len {spec.seq_len}")
        cut = spec.seq_len
        if sequences is not None:  # whole sequences, as far as they fit (VILA never shortens a caption that fits)
            ends = np.flatnonzero(np.r_[sequences[1:] != sequences[:-1], True]) + 1
            cut = int(ends[ends <= cut][-1]) if (ends <= cut).any() else cut
        tokens, label_mask, n_images = truncate(tokens, label_mask, starts, n, cut)
        tokens, label_mask, level = aligngpt.drop_indicator(tokens, label_mask, level, n_images)
        if sequences is not None:
            sequences = sequences[: len(tokens)]
    if len(tokens) < 2 or not label_mask[1:].any():
        raise SkipExample("no_supervised_tokens", "after truncation" if truncated else "")
    if n_images > spec.max_images:
        raise SkipExample("too_many_images", f"{n_images} images > max_images {spec.max_images}")

    k = crops_for_tiling(spec.tiling)
    pixels = np.zeros((n_images, k, spec.image_size, spec.image_size, 3), np.uint8)
    for j in range(n_images):
        if rec.image_bytes is not None:
            data, name = rec.image_bytes[j], rec.image_paths[j] if j < len(rec.image_paths) else f"image {j}"
        else:
            name = rec.image_paths[j]
            data = img_lib.read_file(raw.image_folder, name)
        pil = img_lib.decode(data, name, spec.max_pixels)
        pixels[j] = img_lib.crops(pil, spec.aspect, spec.image_size, spec.mean, spec.tiling, spec.resample)
    out = {
        "tokens": tokens.astype(np.int32),
        "label_mask": label_mask,
        "images": pixels,
        "id": rec.id,
        "truncated": truncated,
        "source": raw.source,
    }
    if spec.indicator_token_id is not None:
        out["align_level"] = level
    if sequences is not None:
        out["sequence_ids"] = sequences
    return out


def _document_images(rec, max_images: int, order: str = "document"):
    """A document keeps max_images images (interleaved.keep_images: ours or VILA-1.5's choice)."""
    if rec.conversations.num_images <= max_images:
        return rec
    doc, keep = interleaved.keep_images(rec.conversations, max_images, order)
    return dataclasses.replace(
        rec, conversations=doc, image_paths=[rec.image_paths[i] for i in keep],
        image_bytes=None if rec.image_bytes is None else [rec.image_bytes[i] for i in keep])


def record_id(raw: RawRecord) -> Optional[object]:
    """Best-effort id for error messages (the record may be unparseable)."""
    try:
        return parse_record(raw).id
    except SkipExample as e:
        return e.record_id
