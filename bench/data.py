"""Data pipeline benchmark: packing efficiency vs padding, loader throughput vs raw PIL.

    python -m bench.data [--n 10000] [--n-throughput 400] [--workers 2]

On a generated dataset with LLaVA-mix-665k-like lengths (bench/llava_mix.py; N=576 tokens per
image, ~10% text-only) it prints, for several row lengths L: the packing efficiency (real tokens /
all tokens) of our packer, of Grain's BestFitPackIterDataset (64 bins) and of an offline best-fit-
decreasing bound, and the padding efficiency (one example per row). Then the loader's throughput
(examples/s, images/s; JPEG 640x480 -> 336 `pad`) next to PIL's single-thread decode+resize rate.
The last line is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.llava_mix import generate, word_encode
from vlm_jax.config import DataConfig, DataSourceConfig, ImageConfig
from vlm_jax.data import images as img_lib
from vlm_jax.data.examples import expand_images
from vlm_jax.data.pipeline import DataLoader

N_IMG = 576
MEAN = (0.48145466, 0.4578275, 0.40821073)
CONFIGS = [(2048, 4), (4096, 8), (8192, 16)]  # (L, M)


def write_images(folder: str, count: int, size: tuple[int, int], fmt: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        w, h = size
        base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC))
        arr = np.clip(arr.astype(int) + rng.integers(-12, 12, arr.shape), 0, 255).astype(np.uint8)
        name = f"im{i}.{fmt.lower()}"
        Image.fromarray(arr).save(os.path.join(folder, name), fmt, quality=90)
        names.append(name)
    return names


def loader(path, folder, L, M, packing, image_size, workers, batch=8):
    cfg = DataConfig(sources=[DataSourceConfig(path=path, image_folder=folder)], seq_len=L, max_images=M,
                     packing=packing, num_epochs=1, num_workers=workers, shuffle=True,
                     image=ImageConfig(aspect="pad", image_size=image_size, tiling="none"))
    return DataLoader(cfg, batch_size=batch, tokens_per_image=N_IMG, image_token_id=32000,
                      image_size=image_size, image_mean=MEAN, encode=word_encode)


def loader_efficiency(path, folder, L, M, packing, workers) -> float:
    ld = loader(path, folder, L, M, packing, 8, workers)
    for _ in ld:
        pass
    st = ld.stats()
    return st["tokens"] / (st["rows"] * L)


def lengths(recs, L):
    out = []
    for r in recs:
        t, m = word_encode(r["conversations"])
        t, _, _ = expand_images(t, m, N_IMG, 32000)
        out.append((min(len(t), L), int(np.sum(t == 32000)) // N_IMG))
    return out


def grain_best_fit(lens, L, M, bins=64) -> float:
    import grain  # noqa: PLC0415

    els = [{"tokens": np.zeros(n, np.int32), "images": np.zeros((k, 1), np.uint8)} for n, k in lens]
    ds = grain.experimental.BestFitPackIterDataset(
        grain.MapDataset.source(els).to_iter_dataset(), length_struct={"tokens": L, "images": M},
        num_packing_bins=bins, shuffle_bins=False)
    rows = sum(1 for _ in ds)
    return sum(n for n, _ in lens) / (rows * L)


def offline_bound(lens, L, buf=4096) -> float:
    """Best-fit decreasing over buffers of `buf` examples: what sorting ahead could reach."""
    rows = 0
    for s in range(0, len(lens), buf):
        free: list[int] = []
        for n, _ in sorted(lens[s : s + buf], reverse=True):
            fits = [j for j, f in enumerate(free) if f >= n]
            if fits:
                j = min(fits, key=lambda j: free[j])
                free[j] -= n
            else:
                free.append(L - n)
        rows += len(free)
    return sum(n for n, _ in lens) / (rows * L)


def pil_rate(folder, names, size, seconds=5.0) -> float:
    blobs = [open(os.path.join(folder, n), "rb").read() for n in names]
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        img = Image.open(io.BytesIO(blobs[n % len(blobs)])).convert("RGB")
        img_lib.expand2square(img, img_lib.pad_color(MEAN)).resize((size, size), Image.Resampling.BICUBIC)
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000, help="examples for the efficiency runs")
    p.add_argument("--n-throughput", type=int, default=400, help="examples for the throughput run")
    p.add_argument("--workers", type=int, default=2, help="loader threads")
    p.add_argument("--image-size", type=int, default=336)
    args = p.parse_args(argv)
    if args.n < 100 or args.n_throughput < 10 or args.workers < 1:
        p.error("--n >= 100, --n-throughput >= 10, --workers >= 1")
    result: dict = {"examples": args.n, "tokens_per_image": N_IMG}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_images(os.path.join(tmp, "tiny"), 16, (12, 9), "PNG")
        recs = generate(args.n, seed=0, image_names=tiny)
        path = os.path.join(tmp, "mix.json")
        with open(path, "w") as f:
            json.dump(recs, f)
        raw = lengths(recs, 10**9)
        print(f"dataset: {args.n} examples, mean {np.mean([n for n, _ in raw]):.0f} tokens, "
              f"median {np.median([n for n, _ in raw]):.0f}, text-only {np.mean([k == 0 for _, k in raw]):.1%}")
        print(f"{'L':>6} {'M':>3} {'packing':>8} {'grain_bestfit':>14} {'offline_bfd':>12} {'padding':>8}")
        for L, M in tqdm(CONFIGS, desc="efficiency", leave=False):
            lens = lengths(recs, L)
            row = {
                "packing": loader_efficiency(path, os.path.join(tmp, "tiny"), L, M, True, args.workers),
                "grain_bestfit": grain_best_fit(lens, L, M),
                "offline_bfd": offline_bound(lens, L),
                "padding": loader_efficiency(path, os.path.join(tmp, "tiny"), L, M, False, args.workers),
            }
            result[f"L{L}"] = {k: round(v, 4) for k, v in row.items()}
            print(f"{L:>6} {M:>3} {row['packing']:>8.2%} {row['grain_bestfit']:>14.2%} "
                  f"{row['offline_bfd']:>12.2%} {row['padding']:>8.2%}")

        big = write_images(os.path.join(tmp, "big"), 32, (640, 480), "JPEG")
        recs = generate(args.n_throughput, seed=1, image_names=big)
        path = os.path.join(tmp, "tp.json")
        with open(path, "w") as f:
            json.dump(recs, f)
        ld = loader(path, os.path.join(tmp, "big"), 4096, 8, True, args.image_size, args.workers)
        t0 = time.perf_counter()
        for _ in tqdm(ld, desc="throughput", leave=False):
            pass
        dt = time.perf_counter() - t0
        st = ld.stats()
        pil = pil_rate(os.path.join(tmp, "big"), big, args.image_size)
    ex_s, im_s = st["examples"] / dt, st["images"] / dt
    print(f"loader ({args.workers} threads, {os.cpu_count()} cores): {ex_s:.1f} examples/s, {im_s:.1f} images/s;"
          f" PIL decode+pad+resize 640x480 JPEG -> {args.image_size} (1 thread): {pil:.1f} images/s")
    main_l = max(CONFIGS)[0]
    result.update({
        "packing_efficiency": result[f"L{main_l}"]["packing"],
        "padding_efficiency": result["L2048"]["padding"],  # LLaVA's layout: one example per 2048 row
        "headline_seq_len": main_l,
        "examples_per_s": round(ex_s, 1), "images_per_s": round(im_s, 1),
        "pil_images_per_s": round(pil, 1), "workers": args.workers,
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
