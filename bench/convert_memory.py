"""Peak memory of `python -m convert import/export` on a generated ~1 GB HF Llava checkpoint.

    python -m bench.convert_memory [--gb 1.0] [--shard-size 300MB] [--dir /tmp/convert_mem]

The checkpoint is random float32 with a tiny vocabulary and a wide decoder. Each conversion runs in a
child process; its peak RSS (ru_maxrss) is compared with a child that only imports the converter
(baseline) and with the size of what the conversion must hold anyway (the param tree it builds on
import / loads on export). Target: peak - baseline - params < 1.5 x the largest weight file.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HIDDEN, FFN, VOCAB = 2048, 5632, 1024


def generate(out: str, gb: float, shard_bytes: int) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from convert.api import ShardedSafetensorsWriter

    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN
    layers = max(1, round(gb * 1e9 / 4 / per_layer))
    vc = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          image_size=28, patch_size=14)
    tc = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=layers,
                     num_attention_heads=16)
    LlavaConfig(vision_config=vc, text_config=tc, image_token_index=VOCAB - 1).save_pretrained(out)
    shapes = {"language_model.model.embed_tokens.weight": (VOCAB, HIDDEN),
              "language_model.model.norm.weight": (HIDDEN,), "language_model.lm_head.weight": (VOCAB, HIDDEN),
              "multi_modal_projector.linear_1.weight": (HIDDEN, 64), "multi_modal_projector.linear_1.bias": (HIDDEN,),
              "multi_modal_projector.linear_2.weight": (HIDDEN, HIDDEN), "multi_modal_projector.linear_2.bias": (HIDDEN,),
              "vision_tower.embeddings.class_embedding": (64,), "vision_tower.embeddings.patch_embedding.weight": (64, 3, 14, 14),
              "vision_tower.embeddings.position_embedding.weight": (5, 64), "vision_tower.pre_layrnorm.weight": (64,),
              "vision_tower.pre_layrnorm.bias": (64,), "vision_tower.post_layernorm.weight": (64,),
              "vision_tower.post_layernorm.bias": (64,)}
    for i in range(2):
        p = f"vision_tower.encoder.layers.{i}."
        for n, s in (("self_attn.q_proj", 64), ("self_attn.k_proj", 64), ("self_attn.v_proj", 64),
                     ("self_attn.out_proj", 64), ("mlp.fc1", 128)):
            shapes[p + n + ".weight"], shapes[p + n + ".bias"] = (s, 64), (s,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (64, 128), (64,)
        for n in ("layer_norm1", "layer_norm2"):
            shapes[p + n + ".weight"], shapes[p + n + ".bias"] = (64,), (64,)
    for i in range(layers):
        p = f"language_model.model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (HIDDEN, HIDDEN)
        shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (FFN, HIDDEN)
        shapes[p + "mlp.down_proj.weight"] = (HIDDEN, FFN)
        shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    writer = ShardedSafetensorsWriter(out, [(k, s, "float32") for k, s in shapes.items()], max_shard_bytes=shard_bytes)
    rng = np.random.default_rng(0)
    for k, s in shapes.items():
        writer.write(k, (rng.standard_normal(s, dtype=np.float32) * 0.02))
    writer.close()


def child_peak_mb(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of a child process (each measured in a fresh grandparent-free run)."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t = time.time()
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{argv} failed:\n{out.stderr[-3000:]}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024, time.time() - t


def sizes(path: str) -> tuple[float, float, int]:
    files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith((".safetensors", ".bin"))]
    return sum(map(os.path.getsize, files)) / 2**20, max(map(os.path.getsize, files)) / 2**20, len(files)


def main() -> None:
    from convert.api import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--shard-size", default="300MB", help="shard size of the generated and exported checkpoints")
    ap.add_argument("--dir", default="/tmp/convert_mem")
    args = ap.parse_args()
    src, ckpt, out = (os.path.join(args.dir, n) for n in ("hf", "ckpt", "export"))
    shutil.rmtree(args.dir, ignore_errors=True)
    generate(src, args.gb, parse_size(args.shard_size))
    total, largest, n_files = sizes(src)
    py = [sys.executable, "-m", "convert"]
    base, _ = child_peak_mb([sys.executable, "-c", "import convert.api, convert.formats.hf_llava"])
    imp, t_imp = child_peak_mb(py + ["import", "--format", "hf-llava", "--src", src, "--out", ckpt, "--no-progress"])
    exp, t_exp = child_peak_mb(py + ["export", "--format", "hf-llava", "--src", ckpt, "--out", out, "--no-progress",
                                     "--max-shard-size", args.shard_size])
    params = total  # float32 source -> float32 params: the param tree is as large as the checkpoint
    print(f"checkpoint: {total:.0f} MB in {n_files} files, largest file {largest:.0f} MB")
    print(f"baseline (imports only): {base:.0f} MB peak RSS")
    print(f"{'step':8} {'peak RSS MB':>12} {'- base - params':>16} {'/ largest file':>15} {'seconds':>8}")
    for name, peak, t in (("import", imp, t_imp), ("export", exp, t_exp)):
        extra = peak - base - params
        print(f"{name:8} {peak:12.0f} {extra:16.0f} {extra / largest:15.2f} {t:8.1f}")


if __name__ == "__main__":
    main()
