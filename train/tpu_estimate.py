"""Step time from XLA:TPU's cost model: a compile-time ESTIMATE (no device ran anything).

The cost model (`cost_analysis()["optimal_seconds"]`) counts a `while` body once, so a scanned layer
stack or the micro-batch loop would be counted once. So the estimate compiles three small variants
of the step on the same mesh, each one micro-batch without accumulation and with its layers
unrolled: decoder/vision layers (1, 1), (0, 1) and (1, 0). Their differences are one decoder and
one vision layer; the step is the (1, 1) variant plus the remaining layers at those costs, times
the micro-batches (whose optimizer update is then counted once per micro-batch: a small
overestimate). The cost model sees almost nothing inside a Pallas kernel (splash attention at B16
L2048 H32: 6.7e7 "flops" of 4.1e11), so with a fused attention the kernels' analytic FLOPs
(forward, remat recompute, backward) are added at the chip's peak: an optimistic figure for them.
"""

from __future__ import annotations

import copy
from typing import Any

from train import flops as flops_lib
from train import metrics
from train.step import build_step
from vlm_jax.config import Config
from vlm_jax.models.attention import FUSED_IMPLS
from vlm_jax.models.vit import num_layers_used

KEYS = ("optimal_seconds", "flops", "bytes accessed")


def variant(cfg: Config, decoder_layers: int, vision_layers: int) -> Config:
    """The step with that many unrolled layers and one micro-batch without accumulation."""
    c = copy.deepcopy(cfg)
    c.model.scan_layers = False
    c.model.decoder.num_layers = decoder_layers
    c.model.vision.num_layers, c.model.vision.select_layer = vision_layers, -1
    c.train.global_batch_size //= cfg.train.grad_accum_steps
    c.train.grad_accum_steps = 1
    return c


def cost(cfg: Config, mesh) -> dict[str, float]:
    """XLA:TPU's cost analysis of the compiled step: optimal_seconds, flops, bytes accessed."""
    ts = build_step(cfg, mesh, cfg.train.num_steps if cfg.train.num_steps > 0 else 1000)
    compiled = ts.train_step.lower(ts.abstract_state, ts.abstract_batch).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return {k: float(analysis.get(k, 0.0)) for k in KEYS}


def estimate(cfg: Config, mesh, attention: str, model_flops: float, tokens: int, images: int, seq: int,
             out=print) -> dict[str, Any]:
    """Cost-model seconds per step, XLA-counted FLOPs and the MFU they imply (per the docstring)."""
    both, no_decoder, no_vision = (cost(variant(cfg, d, v), mesh) for d, v in ((1, 1), (0, 1), (1, 0)))
    layers = {"decoder": cfg.model.decoder.num_layers, "vision": num_layers_used(cfg.model.vision)}
    micro = cfg.train.grad_accum_steps
    step = {k: micro * (both[k] + (layers["decoder"] - 1) * (both[k] - no_decoder[k])
                        + (layers["vision"] - 1) * (both[k] - no_vision[k])) for k in KEYS}
    devices = mesh.devices.size
    peak = metrics.peak_flops(mesh.devices.flat[0].device_kind)
    seconds = step["optimal_seconds"]
    kernel_seconds = 0.0
    if attention in FUSED_IMPLS and peak:
        hw = flops_lib.attention_flops(cfg.model, cfg.train.trainable, tokens, images, seq,
                                       recompute=cfg.model.remat_policy != "none")
        kernel_seconds = hw / devices / peak
    seconds += kernel_seconds
    mfu = model_flops / (devices * peak * seconds) if peak and seconds > 0 else None
    method = ("layers and micro-batches scaled from three 1-layer compiles"
              + ("; Pallas kernels' analytic FLOPs added at peak" if kernel_seconds else ""))
    out(f"  ESTIMATE (XLA:TPU cost model at compile time, {method}): {seconds:.4g} s/step"
        + (f" ({kernel_seconds:.4g} s of it attention kernels)" if kernel_seconds else "")
        + (f", MFU {100 * mfu:.1f}% of {peak / 1e12:.0f} TFLOP/s per chip" if mfu else "")
        + f"; XLA counts {step['flops'] / 1e12:.1f} TFLOP per device per step")
    sig = lambda x: float(f"{x:.4g}")  # noqa: E731
    return {"cost_model_step_seconds": sig(seconds), "cost_model_kernel_seconds": sig(kernel_seconds),
            "cost_model_mfu": None if mfu is None else sig(mfu), "xla_flops_per_device_per_step": step["flops"],
            "xla_bytes_per_device_per_step": step["bytes accessed"], "cost_model_method": method,
            "peak_flops_per_device": peak}
