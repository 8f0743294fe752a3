"""Packing examples into rows with a token budget L and an image budget M (a Grain IterDataset).

Best-fit over a window of open rows: each example goes into the open row it fills most tightly
(tokens and images must both fit); when none fits and the window is full, the fullest row is
emitted (rows older than `max_age` examples go first, so nothing waits forever). Grain's own
First/BestFitPackIterDataset flushes all its bins whenever one example does not fit, which wastes
a few percent more on this length mix (see bench/data.py); this one keeps the window warm.

Checkpointing: the state is the parent's state plus the *indices* of the examples sitting in open
rows; `set_state` re-reads those through `fetch(index)` (random access), so the state stays small
and JSON-serialisable and a restored iterator continues exactly.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import grain
import numpy as np

from vlm_jax.data import aligngpt
from vlm_jax.data.errors import DataError, describe_skips

_PAD_ID = 0


def empty_stats() -> dict:
    return {"examples": 0, "skipped_examples": 0, "skipped_by_reason": {}, "truncated_examples": 0,
            "rows": 0, "tokens": 0, "images": 0, "examples_by_source": {}}


def assemble_row(examples: list[dict], seq_len: int, max_images: int, image_shape: tuple) -> dict:
    """Concatenate examples into one row of the DESIGN.md batch (without the batch axis)."""
    tokens = np.full(seq_len, _PAD_ID, np.int32)
    targets = np.full(seq_len, _PAD_ID, np.int32)
    loss_mask = np.zeros(seq_len, bool)
    segment_ids = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    images = np.zeros((max_images, *image_shape), np.uint8)
    image_mask = np.zeros(max_images, bool)
    pos = img = seg = 0
    for ex in examples:
        t, m, n = ex["tokens"], ex["label_mask"], len(ex["tokens"])
        # an example of several sequences (its "sequence_ids": interleaved caption_sequences) gives each its
        # own segment and positions, and no target across a boundary
        sub = ex.get("sequence_ids")
        first = np.zeros(n, bool) if sub is None else np.r_[False, sub[1:] != sub[:-1]]
        first[0] = True
        ids = seg + np.cumsum(first, dtype=np.int32)
        idx = np.arange(n, dtype=np.int32)
        tokens[pos : pos + n] = t
        targets[pos : pos + n - 1] = t[1:]
        loss_mask[pos : pos + n - 1] = m[1:] & ~first[1:]
        segment_ids[pos : pos + n] = ids
        positions[pos : pos + n] = idx - np.maximum.accumulate(np.where(first, idx, 0))
        seg = int(ids[-1])
        k = len(ex["images"])
        images[img : img + k] = ex["images"]
        image_mask[img : img + k] = True
        pos, img = pos + n, img + k
    row = {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, "segment_ids": segment_ids,
           "positions": positions, "images": images, "image_mask": image_mask}
    if "align_level" in examples[0]:
        row["align_level"] = aligngpt.row_levels(examples, seq_len)
    return row


class _Bin:
    __slots__ = ("examples", "tokens", "images", "born")

    def __init__(self, born: int):
        self.examples, self.tokens, self.images, self.born = [], 0, 0, born

    def add(self, ex: dict) -> None:
        self.examples.append(ex)
        self.tokens += len(ex["tokens"])
        self.images += len(ex["images"])


class PackIterator(grain.DatasetIterator):
    def __init__(self, parent, fetch, seq_len, max_images, image_shape, window, max_segments, strict, skip_limit,
                 skip_limit_is_epoch):
        super().__init__(parent)
        self._fetch, self._L, self._M, self._shape = fetch, seq_len, max_images, image_shape
        self._window, self._max_segments, self._strict = window, max_segments, strict
        self._skip_limit, self._skip_limit_is_epoch = skip_limit, skip_limit_is_epoch
        self._skips_in_row = 0
        self._max_age = 8 * window
        self._bins: list[_Bin] = []
        self._seen = 0  # examples consumed (ages of bins)
        self._done = False
        self._stats = empty_stats()

    # -- packing
    def _place(self, ex: dict) -> Optional[_Bin]:
        """Put ex into a bin; return a bin to emit, if any."""
        n, k = len(ex["tokens"]), len(ex["images"])
        best, best_left = None, None
        for b in self._bins:
            left = self._L - b.tokens - n
            if left >= 0 and b.images + k <= self._M and len(b.examples) < self._max_segments:
                if best is None or left < best_left:
                    best, best_left = b, left
        out = None
        if best is None:
            if len(self._bins) >= self._window:
                old = min(self._bins, key=lambda b: b.born)
                out = old if self._seen - old.born > self._max_age else max(self._bins, key=lambda b: b.tokens)
                self._bins.remove(out)
            best = _Bin(self._seen)
            self._bins.append(best)
        best.add(ex)
        if out is None and (best.tokens == self._L or len(best.examples) == self._max_segments):
            self._bins.remove(best)
            out = best
        return out

    def _count(self, el: dict) -> None:
        s = self._stats
        if "skip" in el:
            if self._strict:
                raise DataError(el["message"])
            s["skipped_examples"] += 1
            s["skipped_by_reason"][el["skip"]] = s["skipped_by_reason"].get(el["skip"], 0) + 1
            self._skips_in_row += 1
            if self._skips_in_row >= self._skip_limit:
                why = "a whole epoch" if self._skip_limit_is_epoch else f"data.max_consecutive_skips={self._skip_limit}"
                raise DataError(f"no usable example: {self._skips_in_row} records in a row were skipped ({why}); "
                                f"skipped so far: {describe_skips(s['skipped_by_reason'])}; the last: {el['message']}")
        else:
            self._skips_in_row = 0
            s["examples"] += 1
            s["truncated_examples"] += int(el.get("truncated", False))
            src = el.get("source") or ""
            s["examples_by_source"][src] = s["examples_by_source"].get(src, 0) + 1

    def _emit(self, b: _Bin) -> dict:
        self._stats["rows"] += 1
        self._stats["tokens"] += b.tokens
        self._stats["images"] += b.images
        return assemble_row(b.examples, self._L, self._M, self._shape)

    def __next__(self) -> dict:
        while not self._done:
            try:
                el = next(self._parent)
            except StopIteration:
                self._done = True
                break
            self._count(el)
            if "skip" in el:
                continue
            self._seen += 1
            out = self._place(el)
            if out is not None:
                return self._emit(out)
        if self._bins:  # end of data: flush in creation order
            return self._emit(self._bins.pop(0))
        raise StopIteration

    # -- checkpointing
    def get_state(self) -> dict:
        return {
            "parent": copy.deepcopy(self._parent.get_state()),
            "bins": [[[e["index"] for e in b.examples], b.born] for b in self._bins],
            "seen": self._seen,
            "skips_in_row": self._skips_in_row,
            "done": self._done,
            "stats": copy.deepcopy(self._stats),
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._bins = []
        for indices, born in state["bins"]:
            b = _Bin(born)
            for i in indices:
                b.add(self._fetch(i))
            self._bins.append(b)
        self._seen, self._done = state["seen"], state["done"]
        self._skips_in_row = state.get("skips_in_row", 0)
        self._stats = copy.deepcopy(state["stats"])

    def stats(self) -> dict:
        return copy.deepcopy(self._stats)


class PackIterDataset(grain.IterDataset):
    """Rows of packed examples. Elements: example dicts with an "index" (or skip records).

    `fetch(index)` must return the same example again (used on restore). `max_segments=1` with
    `window=1` gives the padded, one-example-per-row layout."""

    def __init__(self, parent, fetch: Callable[[int], dict], *, seq_len: int, max_images: int,
                 image_shape: tuple, window: int = 32, max_segments: Optional[int] = None,
                 strict: bool = False, skip_limit: int = 1000, skip_limit_is_epoch: bool = False):
        super().__init__(parent)
        self._args = (fetch, seq_len, max_images, tuple(image_shape), max(1, window),
                      max_segments or seq_len, strict, skip_limit, skip_limit_is_epoch)

    def __iter__(self) -> PackIterator:
        return PackIterator(self._parent.__iter__(), *self._args)
