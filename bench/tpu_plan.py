"""TPU plan benchmark: our train step vs MaxText's, both compiled for a TPU slice by libtpu on this host.

    python -m bench.tpu_plan [--topology v5p-8] [--rows-per-chip 4] [--seq 2048] [--maxtext-venv DIR]

1. The equal workload: our Vicuna-7B decoder step on text rows vs MaxText's llama2-7b, the same
   tokens per chip, sequence length, bf16 compute, f32 weights + AdamW, remat full and an attention
   both cost the same way (MaxText `attention=dot_product`, ours `xla`): HBM per chip with layers
   scanned, and the cost-model step time, on both sides from unrolled 1- and 2-layer compiles (one
   layer = their difference, the rest = the 1-layer compile minus it; step = rest + 32 layers), with
   that account printed per part (seconds, FLOPs, bytes accessed); --hlo-dump keeps both sides' HLO.
   MaxText runs in its own venv (`maxtext[tpu]==0.2.4`, Python 3.12), created at --maxtext-venv when
   missing.
2. Our LLaVA-1.5-7B SFT step (configs/llava15/llava15_7b_finetune.yaml) with each attention backend
   and remat policy: HBM, custom calls, the estimate.

Every time is a compile-time ESTIMATE of XLA:TPU's cost model, not a measurement. The last line is one
JSON object with `ratio_vs_maxtext` (MaxText's cost-model seconds / ours on the equal workload).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT = os.path.join(ROOT, "configs", "llava15", "llava15_7b_finetune.yaml")
MAXTEXT = "maxtext[tpu]==0.2.4"
GIB = 1024**3


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.tpu_plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", default="v5p-8", help="TPU slice (MaxText's names)")
    p.add_argument("--rows-per-chip", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--maxtext-venv", default=os.path.expanduser("~/.cache/vlm_jax/maxtext_venv"),
                   help=f"venv with {MAXTEXT} (created with --python when missing)")
    p.add_argument("--python", default="python3.12", help="Python >= 3.12 for a new MaxText venv")
    p.add_argument("--sft-attention", default="xla,blocked,splash", help="attention backends of part 2")
    p.add_argument("--sft-remat", default="full,dots_with_no_batch_dims_saveable", help="remat policies of part 2")
    p.add_argument("--skip-maxtext", action="store_true", help="part 1 without MaxText (no ratio)")
    p.add_argument("--skip-sft", action="store_true", help="only part 1")
    p.add_argument("--hlo-dump", default="", help="dump XLA's HLO of the part-1 compiles of both sides here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- MaxText


def maxtext_python(venv: str, python: str) -> str:
    exe = os.path.join(venv, "bin", "python")
    if not os.path.exists(exe):
        print(f"creating {venv} with {MAXTEXT} (once; several minutes)", file=sys.stderr)
        subprocess.run([python, "-m", "venv", venv], check=True)
        subprocess.run([exe, "-m", "pip", "install", "-q", MAXTEXT], check=True)
    return exe


def maxtext_plan(exe: str, topology: str, rows: int, seq: int, scan: bool, layers: int = 0,
                 hlo_dump: str = "") -> dict:
    """MaxText's train_compile for llama2-7b (`layers` > 0: that many decoder layers); its printed
    cost and memory analyses, parsed; `hlo_dump`: XLA's dumps of the few-layer compiles there."""
    configs = subprocess.run([exe, "-c", "import maxtext, os; print(os.path.dirname(maxtext.__file__))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    argv = [exe, "-m", "maxtext.trainers.pre_train.train_compile", os.path.join(configs, "configs", "base.yml"),
            f"compile_topology={topology}", "compile_topology_num_slices=1", "model_name=llama2-7b",
            f"per_device_batch_size={rows}", f"max_target_length={seq}", "remat_policy=full",
            "attention=dot_product", f"scan_layers={str(scan).lower()}", "dtype=bfloat16", "weight_dtype=float32",
            "base_output_directory=/tmp/vlm_jax_maxtext_plan", "run_name=plan", "enable_checkpointing=false",
            "dataset_type=synthetic"] + ([f"base_num_decoder_layers={layers}", "override_model_config=true"] if layers else [])
    env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_ACCELERATOR_TYPE=topology, JAX_PLATFORMS="cpu")
    env.pop("PYTHONPATH", None)
    if hlo_dump and layers:
        env["XLA_FLAGS"] = f"--xla_dump_to={os.path.join(hlo_dump, f'maxtext_{layers}_layers')}"
    t0 = time.time()
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"MaxText train_compile failed:\n{r.stderr[-3000:]}")
    cost = ast.literal_eval(re.search(r"Cost analysis: (\{.*\})", r.stdout).group(1))
    mem = dict((k, int(v)) for k, v in re.findall(r"(\w+_in_bytes)=(\d+)", re.search(r"Memory analysis: (.*)",
                                                                                         r.stdout).group(1)))
    total = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"] - mem["alias_size_in_bytes"]
             + mem["temp_size_in_bytes"] + mem.get("generated_code_size_in_bytes", 0))
    dumps = dumped_steps(os.path.join(hlo_dump, f"maxtext_{layers}_layers")) if hlo_dump and layers else []
    return {"seconds": float(cost["optimal_seconds"]), "flops": float(cost.get("flops", 0.0)),
            "bytes": float(cost.get("bytes accessed", 0.0)), "hbm_gib": total / GIB,
            "hlo": max(dumps, key=os.path.getsize) if dumps else "", "temp_gib": mem["temp_size_in_bytes"] / GIB,
            "custom_calls": r.stdout.count("tpu_custom_call"), "compile_seconds": time.time() - t0}


# ----------------------------------------------------------------------------- ours


def our_plan(topology: str, overrides: list[str], estimate: bool = True) -> dict:
    from train import compile_only
    from vlm_jax.config import Config, load

    cfg = load(Config, SFT, overrides)
    lines: list[str] = []
    report = compile_only.plan(cfg, topology=topology, estimate=estimate, out=lines.append)
    print("\n".join(lines), file=sys.stderr)
    return report


def our_layer_costs(topology: str, overrides: list[str], hlo_dump: str = "") -> tuple[dict, dict]:
    """Cost analyses of our step unrolled with 1 and 2 decoder layers (one micro-batch), as MaxText's;
    with `hlo_dump` (XLA_FLAGS' dump folder) each also names its optimized HLO file."""
    from train import topologies, tpu_estimate
    from vlm_jax import sharding
    from vlm_jax.config import Config, load

    cfg = load(Config, SFT, overrides)
    mesh = sharding.make_mesh(cfg.mesh, topologies.compile_devices(topology), topology_order=True)
    costs = []
    for layers in (1, 2):
        before = set(dumped_steps(hlo_dump)) if hlo_dump else set()
        c = tpu_estimate.cost(tpu_estimate.variant(cfg, layers, 1), mesh)
        costs.append({"seconds": c["optimal_seconds"], "flops": c["flops"], "bytes": c["bytes accessed"]})
        if hlo_dump:
            costs[-1]["hlo"] = max(set(dumped_steps(hlo_dump)) - before, key=os.path.getsize)
    return costs[0], costs[1]


def dumped_steps(folder: str) -> list[str]:
    """XLA:TPU's optimized-HLO dumps in `folder` (not the CPU ones of small helper jits)."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in os.listdir(folder)
            if f.endswith(".after_optimizations.txt") and "cpu_after" not in f]


def scaled(one: dict, two: dict, layers: int = 32) -> dict[str, dict]:
    """One layer (2-layer minus 1-layer compile), the rest outside the layers, and the step."""
    layer = {k: two[k] - one[k] for k in ("seconds", "flops", "bytes")}
    rest = {k: one[k] - layer[k] for k in layer}
    return {"layer": layer, "rest": rest, "step": {k: rest[k] + layers * layer[k] for k in layer}}


def decoder_overrides(rows_per_chip: int, chips: int, seq: int) -> list[str]:
    """Vicuna-7B (LLaVA-1.5-7B's decoder) on text rows, MaxText's workload and settings."""
    return [f"data.seq_len={seq}", "data.max_images=0", f"train.global_batch_size={rows_per_chip * chips}",
            "train.grad_accum_steps=1", "train.trainable=[decoder]", "train.loss_vocab_chunk=0",
            "model.attention=xla", "model.remat_policy=full", "model.scan_layers=true"]


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "-" if not x else f"{100 * x:.1f}%"


def main(argv=None) -> int:
    args = parse(argv)
    from train import topologies
    from train.metrics import peak_flops

    slice_ = topologies.lookup(args.topology)
    chips = slice_.num_devices
    rows = [("| workload | HBM per chip, scanned (GiB) | cost-model s/step | MFU estimate | custom calls |"),
            "|---|---|---|---|---|"]
    result: dict = {"topology": args.topology, "rows_per_chip": args.rows_per_chip, "seq": args.seq}

    if args.hlo_dump:  # XLA reads it once, at the first compile: every compile of ours lands there
        os.environ["XLA_FLAGS"] = f"--xla_dump_to={os.path.join(args.hlo_dump, 'ours')}"
    overrides = decoder_overrides(args.rows_per_chip, chips, args.seq)
    ours = our_plan(args.topology, overrides, estimate=False)
    # the cost model counts a scanned body once: both sides from unrolled 1- and 2-layer compiles
    ours_one, ours_two = our_layer_costs(args.topology, overrides, os.path.join(args.hlo_dump, "ours") if args.hlo_dump else "")
    ours_parts = scaled(ours_one, ours_two)
    seconds_ours = ours_parts["step"]["seconds"]
    peak = peak_flops(ours["device_kind"]) or 0.0
    mfu = lambda s: ours["flops_per_step"] / (chips * peak * s) if peak and s > 0 else None  # noqa: E731
    result["ours_decoder"] = {"hbm_per_device_gib": ours["hbm_per_device_gib"], "cost_model_step_seconds": seconds_ours,
                              "cost_model_mfu": mfu(seconds_ours), "custom_calls": ours["custom_calls"],
                              "flops_per_step": ours["flops_per_step"], "parts": ours_parts}
    rows.append(f"| ours, Vicuna-7B decoder, attention xla | {ours['hbm_per_device_gib']:.1f} | "
                f"{seconds_ours:.3f} | {_pct(mfu(seconds_ours))} | {sum(ours['custom_calls'].values())} |")
    account = []
    if not args.skip_maxtext:
        exe = maxtext_python(args.maxtext_venv, args.python)
        scanned = maxtext_plan(exe, args.topology, args.rows_per_chip, args.seq, scan=True)
        mt_one, mt_two = (maxtext_plan(exe, args.topology, args.rows_per_chip, args.seq, scan=False, layers=n,
                                       hlo_dump=args.hlo_dump) for n in (1, 2))
        mt_parts = scaled(mt_one, mt_two)
        seconds = mt_parts["step"]["seconds"]
        result["maxtext"] = {"hbm_per_device_gib": scanned["hbm_gib"], "cost_model_step_seconds": seconds,
                             "cost_model_mfu": mfu(seconds), "custom_calls": scanned["custom_calls"],
                             "compile_seconds": scanned["compile_seconds"], "parts": mt_parts}
        result["ratio_vs_maxtext"] = seconds / seconds_ours
        rows.append(f"| MaxText llama2-7b, attention dot_product | {scanned['hbm_gib']:.1f} | {seconds:.3f} | "
                    f"{_pct(mfu(seconds))} | {scanned['custom_calls']} |")
        rows.append(f"| **ratio MaxText / ours (>= 1: ours is not slower)** | | **{result['ratio_vs_maxtext']:.3f}** | | |")
        account = ["| per chip, cost model | ours s | MaxText s | ours TFLOP | MaxText TFLOP | ours GB accessed | "
                   "MaxText GB accessed |", "|---|---|---|---|---|---|---|"]
        for part, name in (("layer", "one decoder layer (fwd + remat + bwd)"),
                           ("rest", "outside the layers (embedding, head + loss, optimizer)"), ("step", "step")):
            o, m = ours_parts[part], mt_parts[part]
            account.append(f"| {name} | {o['seconds']:.4f} | {m['seconds']:.4f} | {o['flops'] / 1e12:.2f} | "
                           f"{m['flops'] / 1e12:.2f} | {o['bytes'] / 1e9:.1f} | {m['bytes'] / 1e9:.1f} |")
        if args.hlo_dump and ours_one.get("hlo") and mt_one.get("hlo") and mt_two.get("hlo"):
            from bench import hlo_account

            layer = {side: hlo_account.diff(hlo_account.account(one["hlo"], args.seq), hlo_account.account(two["hlo"], args.seq))
                     for side, one, two in (("ours", ours_one, ours_two), ("MaxText", mt_one, mt_two))}
            account += ["", "one decoder layer, bytes read + written per chip by kind of scheduled HLO op "
                        "(2-layer minus 1-layer optimized HLO; bench/hlo_account.py):", hlo_account.table(layer)]

    if not args.skip_sft:
        result["sft"] = []
        for attention in args.sft_attention.split(","):
            for remat in args.sft_remat.split(","):
                r = our_plan(args.topology, [f"model.attention={attention}", f"model.remat_policy={remat}"])
                entry = {"attention": r["attention"], "remat": remat, "fits": r["fits"],
                         "hbm_per_device_gib": r.get("hbm_per_device_gib"),
                         "cost_model_step_seconds": r.get("cost_model_step_seconds"),
                         "cost_model_mfu": r.get("cost_model_mfu"), "custom_calls": r.get("custom_calls", {})}
                result["sft"].append(entry)
                hbm = f"{entry['hbm_per_device_gib']:.1f}" if entry["fits"] else "does not fit"
                rows.append(f"| ours, LLaVA-1.5-7B SFT, {r['attention']}, remat {remat} | {hbm} | "
                            f"{_num(entry['cost_model_step_seconds'], '.3f')} | {_pct(entry['cost_model_mfu'])} | "
                            f"{sum(entry['custom_calls'].values())} |")
    print(f"TPU plans on {args.topology} ({chips} chips), {args.rows_per_chip} rows x {args.seq} tokens per chip "
          f"for the decoder; libtpu {topologies.libtpu_version()}; times are compile-time cost-model ESTIMATES")
    print("\n".join(rows))
    if account:
        print("\nwhere the time goes (the equal workload, per chip per step):")
        print("\n".join(account))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
