"""`--compile-only`: compile the train step against abstract shapes and print per-device memory.

Nothing is allocated: the state is `jax.eval_shape`d, the batch is ShapeDtypeStructs with the
batch sharding, and XLA's memory analysis of the compiled SPMD program is per device.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import jax
import numpy as np

from train import flops as flops_lib
from train import state as state_lib
from vlm_jax import config_check, sharding
from vlm_jax.config import Config

GB = 1024**3


def per_device_bytes(abstract: Any) -> int:
    """Bytes of the largest shard set any one device holds for a tree of sharded ShapeDtypeStructs."""
    total = 0
    for leaf in jax.tree.leaves(abstract):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def plan(cfg: Config, *, model=None, devices: Optional[list] = None, device_memory_gb: float = 80.0,
         out=print) -> dict:
    devices = list(jax.devices() if devices is None else devices)
    config_check.check_devices(cfg, len(devices), jax.process_count())
    mesh = sharding.make_mesh(cfg.mesh, devices)
    steps = cfg.train.num_steps if cfg.train.num_steps > 0 else 1000
    setup = state_lib.build(cfg, mesh, steps, model=model)
    t0 = time.time()
    compiled = setup.train_step.lower(setup.abstract_state, state_lib.abstract_batch(setup)).compile()
    seconds = time.time() - t0
    mem = compiled.memory_analysis()
    params = per_device_bytes(setup.abstract_state["params"])
    opt = per_device_bytes(setup.abstract_state["opt_state"])
    batch = per_device_bytes(state_lib.abstract_batch(setup))
    args = int(getattr(mem, "argument_size_in_bytes", params + opt + batch))
    outs = int(getattr(mem, "output_size_in_bytes", 0))
    alias = int(getattr(mem, "alias_size_in_bytes", 0))
    temp = int(getattr(mem, "temp_size_in_bytes", 0))
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    peak = args + outs - alias + temp + code
    shapes = state_lib.abstract_batch(setup)
    seq = shapes["tokens"].shape[1]
    images = shapes["images"].shape[0] * shapes["images"].shape[1] * shapes["images"].shape[2]
    flops = flops_lib.step_flops(cfg.model, cfg.train.trainable, shapes["tokens"].shape[0] * seq, images, seq)
    flops /= len(devices)
    report = {
        "devices": len(devices),
        "mesh": dict(mesh.shape),
        "params_total": setup.num_params,
        "params_trainable": setup.num_trainable,
        "param_bytes_per_device": params,
        "opt_state_bytes_per_device": opt,
        "batch_bytes_per_device": batch,
        "temp_bytes_per_device": temp,
        "output_bytes_not_aliased": outs - alias,
        "peak_bytes_per_device": peak,
        "flops_per_device_per_step": flops,
        "compile_seconds": seconds,
        "fits": peak <= device_memory_gb * GB,
        "device_memory_gb": device_memory_gb,
    }
    rows = [
        ("params", params), ("optimizer state", opt), ("batch", batch),
        ("activations + gradients (XLA temp)", temp), ("outputs not aliased to inputs", outs - alias),
        ("generated code", code), ("total per device", peak),
    ]
    out(f"compile-only: {setup.num_params / 1e9:.3f}B params ({setup.num_trainable / 1e9:.3f}B trainable), "
        f"mesh {dict(mesh.shape)} on {len(devices)} x {devices[0].device_kind}, "
        f"global batch {cfg.train.global_batch_size} x {state_lib.abstract_batch(setup)['tokens'].shape[1]} tokens, "
        f"{cfg.train.grad_accum_steps} micro-batch(es); compiled in {seconds:.1f}s")
    for name, b in rows:
        out(f"  {name:<38} {b / GB:10.2f} GiB")
    verdict = "fits" if report["fits"] else "does NOT fit"
    out(f"  => {verdict} in {device_memory_gb:g} GB per device")
    if flops:
        out(f"  model FLOPs (analytic, full rows and image slots): {flops / 1e12:.1f} TFLOP per device per step")
    return report
