"""Interleaved image-text documents (MMC4 layout, as VILA pre-trains on) -> template-free token ids.

A record is MMC4's own JSON line:

    {"text_list": ["sentence 0", "sentence 1", ...],
     "image_info": [{"image_name": "a.jpg", "matched_text_index": 1}, ...], "id": ...}

As VILA's LazyMMC4Dataset does, every image goes as `<image>\n` right before the sentence it is matched
to (images ordered by that sentence), sentences are joined with " " (no space before an image), the
document gets BOS (if the tokenizer has one) and EOS, and there is no chat template. Loss (`data.interleaved_loss`):

- `all`: every text token and the EOS;
- `after_image`: only sentences that directly follow an image (VILA's `image_following_text_only`),
  and the EOS if the last sentence does. VILA separates sentences with a pad token in this mode to
  find the spans; here the input ids are the same in both modes and only the mask differs.

Image placeholders are never supervised. COYO-style caption groups (4 captions per record in VILA)
fit the same layout: one sentence per caption, each matched to its image. A source with
`caption_sequences: true` reads such a record as VILA-1.5's LazyCoyoDataset does: every caption is its
own sequence, BOS `<image>` "\n" caption EOS, all text supervised (`CONCAT_SAMPLES = False`; its
collator makes each a batch row); here the sequences of a record share a packed row as separate
segments (own positions, no attention across), which computes the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from vlm_jax.data import templates
from vlm_jax.data.errors import SkipExample
from vlm_jax.tokenizer import IMAGE_TOKEN

LOSS_MODES = ("all", "after_image")
# which images a document over the image budget keeps: the first in document order, or VILA-1.5's rule
# (LazyMMC4Dataset: the first max_num_images of image_info as listed, then sorted by their sentence)
BUDGET_ORDERS = ("document", "image_info")


@dataclasses.dataclass(frozen=True)
class Document:
    sentences: tuple[str, ...]
    images_before: tuple[int, ...]  # how many images sit right before each sentence
    info_index: tuple[int, ...] = dataclasses.field(default=(), compare=False)  # image_info index per image
    captions: bool = False  # each sentence with its one image is its own sequence (caption_sequences)

    @property
    def num_images(self) -> int:
        return int(sum(self.images_before))


def is_document(payload: Any) -> bool:
    return isinstance(payload, dict) and "text_list" in payload and "conversations" not in payload


def parse_mmc4(payload: dict) -> tuple[Document, list[int]]:
    """-> the document and the order of `image_info` entries as they appear in it."""
    texts, infos = payload.get("text_list"), payload.get("image_info", [])
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise SkipExample("malformed_record", "'text_list' must be a non-empty list of strings")
    if not isinstance(infos, list):
        raise SkipExample("malformed_record", "'image_info' must be a list")
    where = []
    for j, info in enumerate(infos):
        idx = info.get("matched_text_index") if isinstance(info, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("image_name"), str) or not isinstance(idx, int) \
                or isinstance(idx, bool) or not 0 <= idx < len(texts):
            raise SkipExample("malformed_record", f"image_info[{j}] needs image_name and a matched_text_index "
                                                  f"in [0, {len(texts)})")
        where.append(idx)
    order = sorted(range(len(infos)), key=lambda j: where[j])  # stable: ties keep the listed order
    counts = np.bincount(np.asarray(where, np.int64), minlength=len(texts)) if where else np.zeros(len(texts), int)
    sentences = tuple(t.replace(IMAGE_TOKEN, "<IMAGE>") for t in texts)  # as VILA: a literal tag is not an image
    return Document(sentences, tuple(int(c) for c in counts), tuple(order)), order


def image_names(payload: dict, order: list[int]) -> list[str]:
    return [payload["image_info"][j]["image_name"] for j in order]


def as_captions(doc: Document) -> Document:
    """The document of a `caption_sequences` source: one image per sentence, each pair a sequence."""
    for i, k in enumerate(doc.images_before):
        if k != 1:
            raise SkipExample("malformed_record", f"caption_sequences: sentence {i} has {k} images matched "
                                                  "(one image per caption)")
    return dataclasses.replace(doc, captions=True)


def keep_images(doc: Document, max_images: int, order: str = "document") -> tuple[Document, list[int]]:
    """Keep `max_images` images (the text stays): the first in document order, or (`image_info`) the
    first in image_info order as VILA-1.5 does; captions (`doc.captions`) go with their image.
    -> the document and the kept images' document positions."""
    if order not in BUDGET_ORDERS:
        raise ValueError(f"data.image_budget_order must be one of {BUDGET_ORDERS}, got {order!r}")
    n = doc.num_images
    if doc.captions:
        info = doc.info_index[:max_images] if len(doc.info_index) == n else ()
        return dataclasses.replace(doc, sentences=doc.sentences[:max_images],
                                   images_before=doc.images_before[:max_images], info_index=info), \
            list(range(min(n, max_images)))
    if order == "image_info" and len(doc.info_index) == n:
        first = set(sorted(doc.info_index)[:max_images])
        keep = [i for i in range(n) if doc.info_index[i] in first]
    else:
        keep = list(range(min(n, max_images)))
    where = [s for s, k in enumerate(doc.images_before) for _ in range(k)]  # sentence of each image
    counts = [0] * len(doc.sentences)
    for i in keep:
        counts[where[i]] += 1
    info = tuple(doc.info_index[i] for i in keep) if len(doc.info_index) == n else ()
    return Document(doc.sentences, tuple(counts), info), keep


def render(doc: Document, eos: str, loss: str = "all") -> list[tuple[str, bool]]:
    """(text, supervised) segments, `<image>` tags in place (templates' segment format)."""
    if loss not in LOSS_MODES:
        raise ValueError(f"data.interleaved_loss must be one of {LOSS_MODES}, got {loss!r}")
    segs = []
    for i, (text, k) in enumerate(zip(doc.sentences, doc.images_before)):
        sep = " " if i and not k else ""
        segs.append(((IMAGE_TOKEN + "\n") * k + sep + text, loss == "all" or k > 0))
    segs.append((eos, loss == "all" or doc.images_before[-1] > 0))
    return segs


def encode_document(doc: Document, tokenizer, loss: str = "all"):
    """-> templates.Encoded(tokens with one IMAGE_MARKER per image, label_mask)."""
    return templates.tokenize_segments(render(doc, tokenizer.eos_token or "", loss), tokenizer, add_bos=True)


def encode_captions(doc: Document, tokenizer) -> tuple[templates.Encoded, np.ndarray]:
    """Every caption its own sequence, as VILA-1.5's LazyCoyoDataset: `<image>\n` + caption + EOS through
    tokenizer_image_token (BOS first), all supervised but the image. -> the sequences back to back and
    the sequence index of every token."""
    eos = tokenizer.eos_token or ""
    parts = [templates.tokenize_segments([(IMAGE_TOKEN * k + "\n" + text + eos, True)], tokenizer, add_bos=True)
             for text, k in zip(doc.sentences, doc.images_before)]
    tokens = np.concatenate([p.tokens for p in parts])
    mask = np.concatenate([p.label_mask for p in parts])
    return templates.Encoded(tokens, mask), np.repeat(np.arange(len(parts), dtype=np.int32),
                                                     [len(p.tokens) for p in parts])


def to_mmc4(doc: Document, names: list[str]) -> dict:
    """The MMC4 fields of a document whose images (`names`) are in document order (ArrayRecord export)."""
    where = [i for i, k in enumerate(doc.images_before) for _ in range(k)]
    return {"text_list": list(doc.sentences),
            "image_info": [{"image_name": n, "matched_text_index": i} for n, i in zip(names, where)]}


def as_record_fields(payload: dict, embedded: Optional[list]) -> tuple[Document, list[str], Optional[list]]:
    """Document, image names and (ArrayRecord) image bytes, all in document order. Embedded bytes are
    stored in `image_info` order."""
    doc, order = parse_mmc4(payload)
    names = image_names(payload, order)
    if embedded is not None:
        if len(embedded) != len(order):
            raise SkipExample("malformed_record",
                              f"{len(embedded)} embedded images for {len(order)} image_info entries")
        embedded = [embedded[j] for j in order]
    return doc, names, embedded
