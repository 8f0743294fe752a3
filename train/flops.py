"""Analytic model FLOPs of a train step, for MFU.

PaLM-style: a matmul weight costs 2 FLOPs per token forward; backward costs 2 more for the
activation gradient (needed wherever an earlier part trains) and 2 for the weight gradient (only
where the part trains). Attention adds 4 * L_ctx * d per token per layer forward (QK^T and AV).
XLA's cost analysis is not used: it counts a scanned layer stack or micro-batch loop once.
"""

from __future__ import annotations

from vlm_jax.config import ModelConfig

_ORDER = ("vision", "projector", "decoder")


def _factors(trainable: list[str]) -> dict[str, int]:
    out = {}
    for i, part in enumerate(_ORDER):
        train_here = part in trainable
        lora_here = part == "decoder" and "lora" in trainable  # adapters: activation grads, no base weight grads
        needs_act_grad = any(p in trainable for p in _ORDER[:i]) or train_here or lora_here
        out[part] = 2 + (2 if needs_act_grad else 0) + (2 if train_here else 0)
    return out


def decoder_matmul_params(cfg: ModelConfig) -> int:
    d = cfg.decoder
    hd = d.dim_per_head
    attn = d.hidden_size * hd * (d.num_heads * 2 + d.kv_heads * 2)
    mlp = 3 * d.hidden_size * d.intermediate_size
    return d.num_layers * (attn + mlp) + d.hidden_size * d.vocab_size  # + lm_head


def vision_matmul_params(cfg: ModelConfig) -> int:
    v = cfg.vision
    per_layer = 4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size
    patch = v.patch_size**2 * v.num_channels * v.hidden_size
    return v.num_layers * per_layer + patch


def step_flops(cfg: ModelConfig, trainable: list[str], tokens: float, images: float, seq_len: int) -> float:
    """FLOPs of one optimizer step over `tokens` real tokens and `images` real image crops."""
    f = _factors(trainable)
    d, v = cfg.decoder, cfg.vision
    dec = tokens * f["decoder"] * decoder_matmul_params(cfg)
    n = v.num_patches
    vis = images * n * f["vision"] * vision_matmul_params(cfg)
    proj = images * n * f["projector"] * (v.hidden_size * d.hidden_size + d.hidden_size**2)
    return float(dec + vis + proj) + attention_flops(cfg, trainable, tokens, images, seq_len)


def attention_flops(cfg: ModelConfig, trainable: list[str], tokens: float, images: float, seq_len: int,
                    recompute: bool = False) -> float:
    """The attention part (QK^T and AV) of step_flops; `recompute` adds the forward a remat'd layer
    runs again before its backward (hardware FLOPs, not model FLOPs)."""
    f = _factors(trainable)
    if recompute:
        f = {k: x + 2 if x > 2 else x for k, x in f.items()}
    d, v = cfg.decoder, cfg.vision
    ctx = seq_len / 2  # causal: on average half the row is attended
    dec = tokens * f["decoder"] * d.num_layers * 2 * ctx * d.num_heads * d.dim_per_head
    n = v.num_patches
    vis = images * n * f["vision"] * v.num_layers * 2 * n * v.hidden_size
    return float(dec + vis)
