"""Shared fixtures for the data tests: a stand-in tokenizer/template and tiny datasets on disk."""

from __future__ import annotations

import io
import json
import os
import zlib

import numpy as np
from PIL import Image

from vlm_jax.config import DataConfig, DataSourceConfig, ImageConfig

MARKER = -200
N_IMG = 4  # tokens per image in the tests
IMAGE_TOKEN = 7


def word_id(w: str) -> int:
    return 10 + zlib.crc32(w.encode()) % 900


def toy_encode(conversations):
    """BOS, then per turn its words; gpt words and the EOS after them are supervised."""
    toks, mask = [1], [False]
    for turn in conversations:
        sup = turn["from"] == "gpt"
        parts = turn["value"].split("<image>")
        for j, part in enumerate(parts):
            if j:
                toks.append(MARKER)
                mask.append(False)
            for w in part.split():
                toks.append(word_id(w))
                mask.append(sup)
        if sup:
            toks.append(2)
            mask.append(True)
    return np.asarray(toks, np.int32), np.asarray(mask, bool)


def png_bytes(w=20, h=12, seed=0, fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def make_records(n: int, seed: int = 0, max_images: int = 2, text_only_every: int = 4):
    """n valid LLaVA records with 0..max_images images and varied lengths; ids 'r0'..."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        k = 0 if i % text_only_every == 0 else int(rng.integers(1, max_images + 1))
        q = " ".join(f"q{i}w{j}" for j in range(int(rng.integers(1, 12))))
        a = " ".join(f"a{i}w{j}" for j in range(int(rng.integers(1, 20))))
        rec = {"id": f"r{i}", "conversations": [
            {"from": "human", "value": "<image>\n" * k + q}, {"from": "gpt", "value": a}]}
        if k:
            rec["image"] = [f"img{(i * 3 + j) % 7}.png" for j in range(k)] if k > 1 else f"img{i % 7}.png"
        recs.append(rec)
    return recs


def write_images(folder: str, count: int = 7) -> None:
    os.makedirs(folder, exist_ok=True)
    for j in range(count):
        with open(os.path.join(folder, f"img{j}.png"), "wb") as f:
            f.write(png_bytes(16 + j, 10 + 2 * j, seed=j))


def write_json(path: str, records) -> str:
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def data_config(path: str, image_folder: str, **kw) -> DataConfig:
    image = kw.pop("image", ImageConfig(image_size=8, tiling="none"))
    defaults = dict(seq_len=64, max_images=3, num_workers=2, prefetch=8, pack_window=8)
    defaults.update(kw)
    return DataConfig(sources=[DataSourceConfig(path=path, image_folder=image_folder)], image=image, **defaults)


def loader_kwargs(**kw):
    out = dict(tokens_per_image=N_IMG, image_token_id=IMAGE_TOKEN, image_size=8,
               image_mean=(0.5, 0.5, 0.5), encode=toy_encode, batch_size=2)
    out.update(kw)
    return out


def segments(batch):
    """Yield (tokens, label-shifted mask, images) of every segment in a batch, in row order."""
    for r in range(batch["tokens"].shape[0]):
        seg = batch["segment_ids"][r]
        img = 0
        for s in range(1, int(seg.max(initial=0)) + 1):
            idx = np.flatnonzero(seg == s)
            toks = batch["tokens"][r, idx]
            n_img = int(np.sum(toks == IMAGE_TOKEN)) // N_IMG
            yield toks, batch["loss_mask"][r, idx], batch["images"][r, img : img + n_img]
            img += n_img
