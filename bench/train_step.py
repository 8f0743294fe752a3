"""Train-step benchmark: ours vs HF LlavaForConditionalGeneration + torch AdamW on this CPU.

    python -m bench.train_step [--steps 3] [--batch 4] [--seq 1024] [--quick] [--device cpu|auto]

Prints raw tokens/s of both and the ratio; supervised tokens/s on a LLaVA-mix-like length
distribution with our packing vs HF padding (random batches and LLaVA's
group_by_modality_length), from step times measured at several padded lengths; and the FLOPs of
our compiled step (XLA cost analysis, layers unrolled so it counts them all) next to the analytic
count. `--device auto` times ours alone on JAX's default backend (a TPU or GPU when present; bf16
compute and `model.attention=auto` there, i.e. the splash / flash_gpu kernels) and prints tokens/s,
MFU against the chip's peak (train/metrics.py's table) and the attention backend. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--examples", type=int, default=4000, help="examples of the length mix")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--device", choices=("cpu", "auto"), default="cpu",
                   help="cpu: ours vs HF PyTorch on this CPU; auto: ours alone on the default JAX backend "
                        "(tokens/s, MFU, attention backend)")
    return p.parse_args(argv)


def model_config(quick: bool):
    from vlm_jax.config import DecoderConfig, ModelConfig, VisionConfig

    if quick:
        v = VisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2)
        d = DecoderConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4)
    else:
        v = VisionConfig(image_size=224, patch_size=14, hidden_size=256, intermediate_size=1024, num_layers=4,
                         num_heads=4)
        d = DecoderConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_layers=8, num_heads=8)
    return ModelConfig(vision=v, decoder=d, image_token_id=d.vocab_size - 1, scan_layers=False)


def batch_arrays(cfg, n_img: int, batch: int, seq: int, seed: int = 0) -> dict:
    """Every row: BOS, one image, random text; all of it supervised after the image."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    tokens = rng.integers(3, cfg.decoder.vocab_size - 1, (batch, seq)).astype(np.int32)
    tokens[:, 1:1 + n_img] = cfg.image_token_id
    targets = np.roll(tokens, -1, axis=1)
    mask = np.ones((batch, seq), bool)
    mask[:, :1 + n_img] = False
    mask[:, -1] = False
    return {"tokens": tokens, "targets": targets, "loss_mask": mask, "segment_ids": np.ones((batch, seq), np.int32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "images": rng.integers(0, 256, (batch, 1, 1, v.image_size, v.image_size, 3), dtype=np.uint8),
            "image_mask": np.ones((batch, 1), bool)}


def time_ours(mcfg, batch: int, seq: int, steps: int) -> dict:
    import jax

    from train.step import build_step
    from vlm_jax import optim, sharding
    from vlm_jax.config import Config, MeshConfig

    cfg = Config(model=mcfg, mesh=MeshConfig(data=1))
    cfg.train.fake_data.enabled, cfg.train.fake_data.seq_len = True, seq
    cfg.train.global_batch_size, cfg.train.trainable = batch, ["vision", "projector", "decoder"]
    cfg.train.optimizer.warmup_steps = 0
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    ts = build_step(cfg, mesh, 100)
    state = ts.init(0)
    from vlm_jax.image_layout import image_layout

    b = sharding.global_batch(batch_arrays(mcfg, image_layout(mcfg).tokens_per_image, batch, seq), mesh, batch)
    t0 = time.time()
    compiled = ts.train_step.lower(state, b).compile()
    compile_s = time.time() - t0
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    state, m = compiled(state, b)
    jax.block_until_ready(m)
    t0 = time.time()
    for _ in range(steps):
        state, m = compiled(state, b)
    jax.block_until_ready(m)
    dt = (time.time() - t0) / steps
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        from vlm_jax.models.attention import resolve_impl

        attention = resolve_impl(mcfg.attention)
    return {"step_s": dt, "compile_s": compile_s, "xla_flops": float(ca.get("flops", 0.0)),
            "params": optim.count_params(ts.abstract_state["params"]), "loss": float(np.asarray(m["loss"])),
            "attention": attention,
            "device_kind": jax.devices()[0].device_kind}


def accelerator_main(args) -> int:
    """--device auto: ours alone on the default backend, tokens/s and MFU."""
    import dataclasses

    import jax

    from train.flops import step_flops
    from train.metrics import peak_flops
    from vlm_jax.image_layout import image_layout

    mcfg = model_config(args.quick)
    accel = jax.default_backend() != "cpu"
    mcfg = dataclasses.replace(mcfg, attention="auto", dtype="bfloat16" if accel else "float32")
    seq, batch = (64, 2) if args.quick else (args.seq, args.batch)
    ours = time_ours(mcfg, batch, seq, args.steps)
    flops = step_flops(mcfg, ["vision", "projector", "decoder"], batch * seq, batch, seq)
    peak = peak_flops(ours["device_kind"])
    tps = batch * seq / ours["step_s"]
    mfu = flops / ours["step_s"] / peak if peak else None
    print(f"{ours['device_kind']} ({jax.default_backend()}), attention {ours['attention']}, {mcfg.dtype}: "
          f"{tps:,.0f} tokens/s, step {ours['step_s'] * 1e3:.1f} ms, "
          + (f"MFU {100 * mfu:.1f}% of {peak / 1e12:.0f} TFLOP/s" if mfu else "MFU: no peak known for this device"),
          file=sys.stderr)
    print(json.dumps({"device_kind": ours["device_kind"], "backend": jax.default_backend(),
                      "attention": ours["attention"], "dtype": mcfg.dtype, "tokens_per_second": tps,
                      "step_seconds": ours["step_s"], "mfu": mfu, "analytic_flops_per_step": flops,
                      "peak_flops_per_device": peak, "compile_seconds": ours["compile_s"],
                      "tokens_per_image": image_layout(mcfg).tokens_per_image}))
    return 0


def hf_model(mcfg):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    v, d = mcfg.vision, mcfg.decoder
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                                       num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                                       image_size=v.image_size, patch_size=v.patch_size, hidden_act="quick_gelu"),
        text_config=LlamaConfig(vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
                                num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads,
                                max_position_embeddings=4096),
        image_token_index=mcfg.image_token_id, image_seq_length=v.num_patches, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).float().train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5)


def time_hf(model, opt, mcfg, n_img: int, batch: int, seq: int, steps: int) -> float:
    import torch

    a = batch_arrays(mcfg, n_img, batch, seq)
    ids = torch.from_numpy(a["tokens"]).long()
    labels = ids.clone()
    labels[:, :1 + n_img] = -100
    pixels = torch.randn(batch, 3, mcfg.vision.image_size, mcfg.vision.image_size)

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, pixel_values=pixels, labels=labels).loss.backward()
        opt.step()

    step()
    t0 = time.time()
    for _ in range(steps):
        step()
    return (time.time() - t0) / steps


def length_mix(n: int, n_img: int, seq: int, seed: int = 0):
    """(length, supervised tokens, has_image) per example of the LLaVA-mix-like distribution."""
    from bench.llava_mix import generate, word_encode

    out = []
    for rec in generate(n, seed=seed):
        toks, mask = word_encode(rec["conversations"])
        has = "image" in rec
        length = min(len(toks) + (n_img - 1 if has else 0), seq)
        out.append((length, int(np.asarray(mask).sum()), has))
    return out


def pack_rows(lengths, seq: int, window: int = 64) -> int:
    """Rows used by a best-fit packer with `window` open rows (as the pipeline packs)."""
    open_rows: list[int] = []
    rows = 0
    for n in lengths:
        fits = [i for i, used in enumerate(open_rows) if used + n <= seq]
        if fits:
            i = max(fits, key=lambda j: open_rows[j])
            open_rows[i] += n
        else:
            open_rows.append(n)
            if len(open_rows) > window:
                open_rows.pop(int(np.argmax(open_rows)))
                rows += 1
    return rows + len(open_rows)


def padded_batches(examples, batch: int, grouped: bool, seed: int = 0, world: int = 8) -> list[int]:
    """Padded length of every batch: random order, or LLaVA's modality-grouped megabatches."""
    rng = np.random.default_rng(seed)
    if not grouped:
        order = rng.permutation(len(examples))
        return [max(examples[i][0] for i in order[k:k + batch]) for k in range(0, len(order), batch)]
    out = []
    for has in (True, False):
        idx = [i for i, e in enumerate(examples) if e[2] == has]
        idx = [idx[i] for i in rng.permutation(len(idx))]
        mega = batch * world
        for k in range(0, len(idx), mega):
            chunk = sorted(idx[k:k + mega], key=lambda i: -examples[i][0])
            out += [max(examples[i][0] for i in chunk[j:j + batch]) for j in range(0, len(chunk), batch)]
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.device == "auto":
        return accelerator_main(args)
    import jax
    import torch

    from train.flops import step_flops
    from vlm_jax.image_layout import image_layout

    torch.set_num_threads(max(1, torch.get_num_threads()))
    mcfg = model_config(args.quick)
    n_img = image_layout(mcfg).tokens_per_image
    seq, batch = (64, 2) if args.quick else (args.seq, args.batch)
    print(f"model: ViT {mcfg.vision.num_layers}x{mcfg.vision.hidden_size}, decoder "
          f"{mcfg.decoder.num_layers}x{mcfg.decoder.hidden_size}, vocab {mcfg.decoder.vocab_size}; "
          f"batch {batch} x {seq} tokens, float32, {jax.devices()[0].device_kind}", file=sys.stderr)
    ours = time_ours(mcfg, batch, seq, args.steps)
    model, opt = hf_model(mcfg)
    lengths_timed = sorted({max(n_img + 8, seq // 4), seq // 2, seq})
    hf_t = {L: time_hf(model, opt, mcfg, n_img, batch, L, args.steps) for L in lengths_timed}
    raw_ours, raw_hf = batch * seq / ours["step_s"], batch * seq / hf_t[seq]
    analytic = step_flops(mcfg, ["vision", "projector", "decoder"], batch * seq, batch, seq)

    examples = length_mix(args.examples, n_img, seq)
    sup = sum(e[1] for e in examples)
    rows = pack_rows([e[0] for e in examples], seq)
    packed_eff = sum(e[0] for e in examples) / (rows * seq)
    ours_sup = sup / (rows / batch * ours["step_s"])
    xs = np.array(lengths_timed, float)
    ys = np.array([hf_t[L] for L in lengths_timed])
    hf_time = lambda Ls: float(sum(np.interp(L, xs, ys) for L in Ls))  # noqa: E731
    hf_sup_random = sup / hf_time(padded_batches(examples, batch, grouped=False))
    hf_sup_grouped = sup / hf_time(padded_batches(examples, batch, grouped=True))

    print(f"raw tokens/s: ours {raw_ours:,.0f}  HF {raw_hf:,.0f}  ratio {raw_ours / raw_hf:.2f}x", file=sys.stderr)
    print(f"supervised tokens/s on the LLaVA-like mix: ours packed ({packed_eff:.1%} full) {ours_sup:,.0f}; "
          f"HF padded random {hf_sup_random:,.0f} ({ours_sup / hf_sup_random:.2f}x), "
          f"grouped by modality+length {hf_sup_grouped:,.0f} ({ours_sup / hf_sup_grouped:.2f}x)", file=sys.stderr)
    print(f"FLOPs per step: XLA {ours['xla_flops'] / 1e12:.3f} T, analytic {analytic / 1e12:.3f} T "
          f"(ratio {ours['xla_flops'] / analytic:.2f})", file=sys.stderr)
    print(json.dumps({
        "ours_tokens_per_second": raw_ours, "hf_tokens_per_second": raw_hf, "ratio": raw_ours / raw_hf,
        "ours_supervised_tokens_per_second_packed": ours_sup, "hf_supervised_tokens_per_second_random": hf_sup_random,
        "hf_supervised_tokens_per_second_grouped": hf_sup_grouped, "packing_efficiency": packed_eff,
        "xla_flops_per_step": ours["xla_flops"], "analytic_flops_per_step": analytic,
        "flops_ratio": ours["xla_flops"] / analytic, "hf_step_seconds": {str(k): v for k, v in hf_t.items()},
        "ours_step_seconds": ours["step_s"], "ours_compile_seconds": ours["compile_s"], "params": ours["params"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
