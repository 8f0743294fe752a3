"""`--compile-only`: compile the train step against abstract shapes and print per-device memory.

Nothing is allocated: the state is `jax.eval_shape`d, the batch is ShapeDtypeStructs with the
batch sharding, and XLA's memory analysis of the compiled SPMD program is per device. Without a
topology the devices are (faked) CPU ones; with `--topology NAME` they are a TPU slice's
compile-only devices and the compiler is libtpu's (see train/topologies.py and train/tpu_estimate.py).
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from train import flops as flops_lib
from train import topologies
from train.step import build_step
from vlm_jax import config_check, optim, sharding
from vlm_jax.config import Config
from vlm_jax.models.attention import resolve_impl

GB = 1024**3


def per_device_bytes(abstract: Any) -> int:
    """Bytes of the largest shard set any one device holds for a tree of sharded ShapeDtypeStructs."""
    total = 0
    for leaf in jax.tree.leaves(abstract):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


class DoesNotFit(Exception):
    """The TPU compiler ran out of HBM; the message names the largest buffers."""


def custom_calls(stablehlo: str) -> dict[str, int]:
    """Custom-call targets in the lowered program text and how often each appears (a scanned
    layer's kernels appear once; the compiled TPU text is not readable with every libtpu)."""
    counts: dict[str, int] = {}
    for target in re.findall(r"stablehlo\.custom_call @([\w$.]+)", stablehlo):
        if target not in ("Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "xla_python_cpu_callback"):
            counts[target] = counts.get(target, 0) + 1
    return counts


def _largest_buffers(message: str, n: int = 5) -> str:
    """The compiler's own 'largest allocations' lines of an out-of-memory error, condensed."""
    sizes = re.findall(r"Size: ([\d.]+[KMGT]?i?B?)\n.*?Shape: (\S+)", message, flags=re.S)
    used = re.search(r"Used ([\d.]+[KMGT]i?B?) of ([\d.]+[KMGT]i?B?) hbm", message)
    head = f"used {used.group(1)} of {used.group(2)} HBM; " if used else ""
    if sizes:
        return head + "largest buffers: " + ", ".join(f"{s} {shape}" for s, shape in sizes[:n])
    return head + message.strip().splitlines()[0][:500]


def _compile(ts):
    lowered = ts.train_step.lower(ts.abstract_state, ts.abstract_batch)
    try:
        return lowered, lowered.compile()
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError; anything else re-raised
        if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
            raise DoesNotFit(_largest_buffers(str(e))) from None
        raise


def plan(cfg: Config, *, model=None, devices: Optional[list] = None, device_memory_gb: float = 80.0,
         topology: Optional[str] = None, estimate: bool = True, out=print) -> dict:
    """Compile the step and return (and print) its per-device plan. With `topology` the devices are
    that TPU slice's, capacity its HBM, and (with `estimate`) a cost-model step time is added."""
    slice_ = topologies.lookup(topology) if topology else None
    if slice_ is not None:
        devices = topologies.compile_devices(topology) if devices is None else devices
        device_memory_gb = slice_.hbm_bytes / GB
    devices = list(jax.devices() if devices is None else devices)
    config_check.check_devices(cfg, len(devices), 1 if slice_ else jax.process_count())
    mesh = sharding.make_mesh(cfg.mesh, devices, topology_order=slice_ is not None)
    steps = cfg.train.num_steps if cfg.train.num_steps > 0 else 1000
    ts = build_step(cfg, mesh, steps, model=model)
    num_params, num_trainable = optim.param_counts(ts.abstract_state["params"], cfg.train.trainable)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        attention = resolve_impl(cfg.model.attention)
    shapes = ts.abstract_batch
    seq = shapes["tokens"].shape[1]
    images = shapes["images"].shape[0] * shapes["images"].shape[1] * shapes["images"].shape[2]
    tokens = shapes["tokens"].shape[0] * seq
    report = {
        "topology": topology, "devices": len(devices), "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape),
        "attention": attention, "params_total": num_params, "params_trainable": num_trainable,
        "tokens_per_step": tokens, "hbm_capacity_gib": round(device_memory_gb, 2),
    }
    out(f"compile-only: {num_params / 1e9:.3f}B params ({num_trainable / 1e9:.3f}B trainable), "
        f"mesh {dict(mesh.shape)} on {len(devices)} x {devices[0].device_kind}"
        f"{f' ({topology})' if topology else ''}, global batch {cfg.train.global_batch_size} x {seq} tokens, "
        f"{cfg.train.grad_accum_steps} micro-batch(es), attention {attention}")
    t0 = time.time()
    try:
        lowered, compiled = _compile(ts)
    except DoesNotFit as e:
        report.update(fits=False, compile_seconds=round(time.time() - t0, 1), error=str(e))
        out(f"  => does NOT fit in {device_memory_gb:g} GiB per device: {e}")
        return report
    seconds = time.time() - t0
    mem = compiled.memory_analysis()
    params = per_device_bytes(ts.abstract_state["params"])
    opt = per_device_bytes(ts.abstract_state["opt_state"])
    batch = per_device_bytes(shapes)
    args = int(getattr(mem, "argument_size_in_bytes", params + opt + batch))
    outs = int(getattr(mem, "output_size_in_bytes", 0))
    alias = int(getattr(mem, "alias_size_in_bytes", 0))
    temp = int(getattr(mem, "temp_size_in_bytes", 0))
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    peak = args + outs - alias + temp + code
    flops = flops_lib.step_flops(cfg.model, cfg.train.trainable, tokens, images, seq)
    calls = custom_calls(lowered.as_text())
    report.update({
        "param_bytes_per_device": params, "opt_state_bytes_per_device": opt, "batch_bytes_per_device": batch,
        "argument_bytes_per_device": args, "temp_bytes_per_device": temp, "output_bytes_not_aliased": outs - alias,
        "peak_bytes_per_device": peak, "hbm_per_device_gib": round(peak / GB, 2),
        "headroom": round(1 - peak / (device_memory_gb * GB), 3), "fits": peak <= device_memory_gb * GB,
        "flops_per_step": flops, "flops_per_device_per_step": flops / len(devices), "custom_calls": calls,
        "compile_seconds": round(seconds, 1), "device_memory_gb": device_memory_gb,
    })
    rows = [
        ("params", params), ("optimizer state", opt), ("batch", batch),
        ("activations + gradients (XLA temp)", temp), ("outputs not aliased to inputs", outs - alias),
        ("generated code", code), ("total per device", peak),
    ]
    out(f"  compiled in {seconds:.1f}s" + (f" by libtpu {topologies.libtpu_version()}" if slice_ else ""))
    for name, b in rows:
        out(f"  {name:<38} {b / GB:10.2f} GiB")
    verdict = "fits" if report["fits"] else "does NOT fit"
    unit = "GiB of HBM" if slice_ else "GB"
    out(f"  => {verdict} in {device_memory_gb:g} {unit} per device (headroom {100 * report['headroom']:.1f}%)")
    if calls:
        out("  custom calls in the program text: " + ", ".join(f"{k} x{v}" for k, v in sorted(calls.items())))
    if flops:
        out(f"  model FLOPs (analytic, full rows and image slots): {flops / len(devices) / 1e12:.1f} TFLOP per device "
            "per step")
    if slice_ is not None and estimate and model is None:
        from train import tpu_estimate

        report.update(tpu_estimate.estimate(cfg, mesh, attention, flops, tokens, images, seq, out=out))
    return report


def plan_stages(stages: list, **kw) -> list[dict]:
    """`plan(stage.cfg, **kw)` for a run config or every stage of a recipe, each stage named first."""
    reports = []
    for s in stages:
        if s.name:
            print(f"== stage {s.name}")
        reports.append(plan(s.cfg, **kw))
    return reports


def json_line(stages: list, reports: list[dict]) -> str:
    """One JSON object: the plan of a run config, or of a recipe's stage with the largest HBM need
    (with every stage's plan under `stages`)."""
    if len(reports) == 1:
        return json.dumps(reports[0])
    worst = max(reports, key=lambda r: (not r["fits"], r.get("peak_bytes_per_device", 0)))
    return json.dumps({**worst, "fits": all(r["fits"] for r in reports),
                       "stages": [{"stage": s.name, **r} for s, r in zip(stages, reports)]})


def run_on_topology(stages: list, topology: str, as_json: bool = False) -> int:
    """`--compile-only --topology NAME` for a run config or every stage of a recipe. 0 = every
    plan fits, 1 = one does not (its error names the largest buffers); ConfigError (exit 2) for an
    unknown name, missing libtpu or a mesh/batch that does not split over the slice."""
    devices = topologies.compile_devices(topology)
    for s in stages:
        config_check.check_devices(s.cfg, len(devices), 1)
    reports = plan_stages(stages, devices=devices, topology=topology)
    for s, r in zip(stages, reports):
        if not r["fits"]:
            where = f"stage {s.name}: " if s.name else ""
            detail = r.get("error") or f"{r['hbm_per_device_gib']} GiB per device"
            print(f"error: {where}the plan does not fit in {r['hbm_capacity_gib']} GiB of HBM on {topology}: {detail}",
                  file=sys.stderr)
    if as_json:
        print(json_line(stages, reports))
    return 0 if all(r["fits"] for r in reports) else 1
