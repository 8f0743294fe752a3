"""Generation speed, ours vs HF `generate` (KV cache on), the same weights, on this machine.

    python -m bench.generate [--new-tokens 128] [--batch-sizes 1,8] [--reps 3]

A random ~60M-parameter LLaVA (CLIP ViT 224/14 4x256, mlp2x_gelu, LLaMA decoder 8x512, vocab 32k) is
built in HF, saved, and imported with the converter. Both sides generate greedily with no EOS, so
every row makes exactly --new-tokens tokens. Reported per batch size: tokens/s (prefill included,
best of --reps, compilation excluded), the ratio, time to first token; the batch-1 rate of ours as
a fraction of the memory-bandwidth bound (decoder bytes read per token / measured copy bandwidth);
the layer-scan cache layout for comparison. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--no-scan", action="store_true", help="skip the layer-scan cache layout")
    return p


def hf_model(args):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vc = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                          image_size=224, patch_size=14, projection_dim=256)
    tc = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                     num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, max_position_embeddings=2048,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=args.vocab - 1, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def copy_bandwidth() -> float:
    """Bytes/s of a large numpy copy (read + write counted)."""
    import numpy as np

    a = np.ones(64 * 2**20 // 4 * 4, np.float32)  # 256 MB
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def best_of(reps, fn):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    except ValueError:
        build_parser().error("--batch-sizes: comma-separated integers")
    if args.new_tokens < 2 or args.reps < 1 or min(batch_sizes) < 1:
        build_parser().error("need --new-tokens >= 2, --reps >= 1, batch sizes >= 1")

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from tqdm import tqdm

    from convert.api import load_in_memory
    from vlm_jax import generate as gen
    from vlm_jax.image_layout import image_layout

    hf = hf_model(args)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        params, cfg, _ = load_in_memory(tmp)
    params = jax.tree.map(jnp.asarray, params)
    hcfg = gen.hashable_config(cfg)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    dec = params["decoder"]
    read_per_token = 4 * (sum(int(np.prod(x.shape)) for x in jax.tree.leaves(dec["layers"]))
                          + int(np.prod(dec["lm_head"]["kernel"].shape)) + dec["embed_tokens"]["embedding"].shape[1])
    n_img = image_layout(cfg).tokens_per_image
    rng = np.random.default_rng(0)
    text = list(rng.integers(3, args.vocab - 1, 24))
    prompt = [1] + text[:4] + [cfg.image_token_id] * n_img + text[4:]
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    pixel = torch.tensor(((image / 255.0 - np.asarray(cfg.vision.image_mean)) / np.asarray(cfg.vision.image_std))
                         .transpose(2, 0, 1)[None], dtype=torch.float32)
    print(f"model: {n_params / 1e6:.1f}M params; prompt {len(prompt)} tokens ({n_img} image); "
          f"{args.new_tokens} new tokens; torch threads {torch.get_num_threads()}", file=sys.stderr)

    results = {"params_m": round(n_params / 1e6, 1), "new_tokens": args.new_tokens, "prompt_tokens": len(prompt)}
    steps = [(b, layout) for b in batch_sizes for layout in ("unrolled", "scan")
             if layout == "unrolled" or (b == 1 and not args.no_scan)]
    bar = tqdm(steps, desc="bench", file=sys.stderr)
    for b, layout in bar:
        bar.set_postfix(batch=b, layout=layout)
        batch = {"tokens": jnp.asarray(np.tile(prompt, (b, 1)), jnp.int32),
                 "prompt_mask": jnp.ones((b, len(prompt)), bool),
                 "images": jnp.asarray(np.tile(image[None, None, None], (b, 1, 1, 1, 1, 1)))}
        sc = gen.SamplingConfig(max_new_tokens=args.new_tokens, unroll_layers=layout == "unrolled")
        knobs, ssc = gen.sampling_knobs(sc), gen.static_part(sc)

        def ours_first():
            return jax.block_until_ready(gen.prefill_jit(params, batch, jax.random.key(0), knobs, cfg=hcfg, sc=ssc).tokens)

        def ours_all():
            return jax.block_until_ready(gen.generate(cfg, params, batch, sc).tokens)

        ours_all()  # compile
        ours_first()
        t_ours = best_of(args.reps, ours_all)
        ttft_ours = best_of(args.reps, ours_first)
        key = f"b{b}" + ("_scan" if layout == "scan" else "")
        results[f"ours_{key}_tok_s"] = round(b * args.new_tokens / t_ours, 1)
        results[f"ours_{key}_ttft_ms"] = round(1000 * ttft_ours, 1)
        if layout == "scan":
            continue

        ids = torch.tensor(np.tile(prompt, (b, 1)))
        pix = pixel.repeat(b, 1, 1, 1)

        def hf_gen(n):
            with torch.no_grad():
                return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix,
                                   max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)

        hf_gen(2)  # warm up
        t_hf = best_of(args.reps, lambda: hf_gen(args.new_tokens))
        ttft_hf = best_of(args.reps, lambda: hf_gen(1))
        results[f"hf_b{b}_tok_s"] = round(b * args.new_tokens / t_hf, 1)
        results[f"hf_b{b}_ttft_ms"] = round(1000 * ttft_hf, 1)
        results[f"ratio_b{b}"] = round(t_hf / t_ours, 3)
        ours_ids = np.asarray(ours_all())[0]
        hf_ids = hf_gen(args.new_tokens)[0, len(prompt):].numpy()
        results[f"greedy_same_prefix_b{b}"] = int(np.argmin(np.append(ours_ids == hf_ids, False)))
    bar.close()

    bw = copy_bandwidth()
    results["copy_bandwidth_gb_s"] = round(bw / 1e9, 2)
    results["decoder_bytes_per_token_mb"] = round(read_per_token / 2**20, 1)
    if "ours_b1_tok_s" in results:
        bound = bw / read_per_token
        results["b1_bandwidth_bound_tok_s"] = round(bound, 1)
        results["ours_b1_fraction_of_bound"] = round(results["ours_b1_tok_s"] / bound, 3)

    print(f"{'':>10} {'ours tok/s':>11} {'HF tok/s':>9} {'ratio':>6} {'ours TTFT':>10} {'HF TTFT':>8}")
    for b in batch_sizes:
        print(f"{'batch ' + str(b):>10} {results[f'ours_b{b}_tok_s']:>11} {results[f'hf_b{b}_tok_s']:>9} "
              f"{results[f'ratio_b{b}']:>5}x {results[f'ours_b{b}_ttft_ms']:>8}ms {results[f'hf_b{b}_ttft_ms']:>6}ms")
    if "ours_b1_scan_tok_s" in results:
        print(f"layer-scan cache layout, batch 1: {results['ours_b1_scan_tok_s']} tok/s")
    if "ours_b1_fraction_of_bound" in results:
        print(f"batch 1: {results['ours_b1_fraction_of_bound']:.1%} of the bandwidth bound "
              f"({results['decoder_bytes_per_token_mb']} MB/token at {results['copy_bandwidth_gb_s']} GB/s)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
