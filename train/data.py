"""Batch sources for training: the Grain pipeline, or deterministic fake batches.

A loader is an iterator of host-local numpy batch dicts (DESIGN.md keys) holding this process's
rows of the global batch, with `get_state()` / `set_state()` (JSON-able) and `stats()`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_jax.config import NO_INDICATOR, Config
from vlm_jax.image_layout import image_layout


def batch_shapes(cfg: Config, rows: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of every batch array for `rows` rows (the same for fake and real data)."""
    v = cfg.model.vision
    crops = image_layout(cfg.model).crops_per_image
    if cfg.train.fake_data.enabled:
        seq, images = cfg.train.fake_data.seq_len, cfg.train.fake_data.max_images
    else:
        seq, images = cfg.data.seq_len, cfg.data.max_images
    return {
        "tokens": ((rows, seq), np.int32),
        "targets": ((rows, seq), np.int32),
        "loss_mask": ((rows, seq), np.bool_),
        "segment_ids": ((rows, seq), np.int32),
        "positions": ((rows, seq), np.int32),
        "images": ((rows, images, crops, v.image_size, v.image_size, 3), np.uint8),
        "image_mask": ((rows, images), np.bool_),
        **({"align_level": ((rows, seq), np.int32)} if cfg.model.aligngpt.enabled else {}),
    }


class FakeBatches:
    """Random but reproducible packed batches: row r of batch i depends only on (seed, i, r),
    so any split of the global batch over processes sees the same data. State = next index."""

    def __init__(self, cfg: Config, global_rows: int, row_start: int, row_stop: int, seed: int):
        self.cfg, self.seed = cfg, seed
        self.rows = range(row_start, row_stop)
        self.shapes = batch_shapes(cfg, row_stop - row_start)
        self.n_img = image_layout(cfg.model).tokens_per_image
        self.index = 0

    def _row(self, i: int, r: int) -> dict:
        f = self.cfg.train.fake_data
        rng = np.random.default_rng([self.seed, i, r])
        seq, vocab = f.seq_len, self.cfg.model.decoder.vocab_size
        ids = rng.integers(3, vocab, size=seq + 1, dtype=np.int32)
        n_real = int(rng.integers(seq // 2, seq + 1))
        seg = np.zeros(seq, np.int32)
        cuts = np.sort(rng.choice(np.arange(1, max(n_real, 2)), size=max(f.segments_per_row - 1, 0), replace=False))
        bounds = [0, *cuts.tolist(), n_real]
        pos = np.zeros(seq, np.int32)
        for k in range(len(bounds) - 1):
            seg[bounds[k]:bounds[k + 1]] = k + 1
            pos[bounds[k]:bounds[k + 1]] = np.arange(bounds[k + 1] - bounds[k])
        images = rng.integers(0, 256, size=self.shapes["images"][0][1:], dtype=np.uint8)
        image_mask = np.zeros(f.max_images, bool)
        tokens = ids[:-1].copy()
        if f.max_images and rng.random() < f.image_fraction and n_real > self.n_img + 2:
            tokens[1:1 + self.n_img] = self.cfg.model.image_token_id
            image_mask[0] = True
        targets = ids[1:].copy()
        loss_mask = (rng.random(seq) < 0.5) & (seg > 0) & (tokens != self.cfg.model.image_token_id)
        row = dict(tokens=tokens, targets=targets, loss_mask=loss_mask, segment_ids=seg, positions=pos,
                   images=images, image_mask=image_mask)
        if self.cfg.model.aligngpt.enabled:  # an indicator after BOS of the first segment when it has the image
            a = self.cfg.model.aligngpt
            row["align_level"] = np.full(seq, NO_INDICATOR, np.int32)
            if image_mask[0] and bounds[1] > self.n_img + 1:
                tokens[1] = a.indicator_token_id
                row["align_level"][1] = int(rng.integers(0, a.num_indicators + 1))
                tokens[2:2 + self.n_img] = self.cfg.model.image_token_id
                loss_mask[:2 + self.n_img] = False
        return row

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = [self._row(self.index, r) for r in self.rows]
        self.index += 1
        return {k: np.stack([row[k] for row in rows]) for k in self.shapes}

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])

    def stats(self) -> dict:
        return {"skipped_examples": 0}


def make_loader(cfg: Config, split: str, global_rows: int, row_start: int, row_stop: int, process_index: int,
                process_count: int):
    """Loader for `split` ("train" | "eval") yielding rows [row_start, row_stop) of each global batch."""
    if cfg.train.fake_data.enabled:
        return FakeBatches(cfg, global_rows, row_start, row_stop, cfg.seed + (0 if split == "train" else 7919))
    from vlm_jax.data import pipeline  # imported here: fake-data runs (tests, planning) need no Grain

    return pipeline.make_loader(
        cfg, split=split, batch_size=row_stop - row_start, process_index=process_index, process_count=process_count
    )
