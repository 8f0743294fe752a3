"""Rotary embeddings and attention: the reference XLA path (einsum + mask), jax.nn.dot_product_attention,
causal block skipping, and the fused Pallas kernels of attention_pallas, chosen by `model.attention`."""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models.attention_pallas import FUSED_IMPLS, Blocks, fused_attention, platform

NEG_INF = -1e30  # finite, so fully masked rows (padding) stay NaN-free


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[dict]) -> np.ndarray:
    """Inverse frequencies as HF computes them (default, `linear`, `llama3`), float32."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv / factor).astype(np.float32)
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope_scaling type '{kind}' (supported: default, linear, llama3)")


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """positions [B, L] -> cos, sin [B, L, head_dim] (HF layout: frequencies repeated twice)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, H, hd]; rotate-half convention of HF LLaMA."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def segment_causal_mask(q_segments: jax.Array, kv_segments: jax.Array, q_positions: jax.Array,
                        kv_positions: jax.Array, causal: bool = True) -> jax.Array:
    """[B, Lq, Lk] bool: same segment (and causal by in-row index order when `causal`)."""
    mask = q_segments[:, :, None] == kv_segments[:, None, :]
    if causal:
        mask = mask & (kv_positions[:, None, :] <= q_positions[:, :, None])
    return mask


MASK_IMPLS = ("xla", "dot_product", "blocked")
ATTENTION_IMPLS = MASK_IMPLS + FUSED_IMPLS + ("auto",)
AUTO = {"tpu": "splash", "gpu": "flash_gpu"}  # any other platform (CPU): blocked
CAUSAL_BLOCK = 128


def resolve_impl(impl: str) -> str:
    """`auto` -> the best backend of the platform being compiled for; others unchanged (checked)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl '{impl}' (known: {', '.join(ATTENTION_IMPLS)})")
    return AUTO.get(platform(), "blocked") if impl == "auto" else impl


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool = True,
                   impl: str = "xla", blocks: Optional[Blocks] = None, mask: Optional[jax.Array] = None) -> jax.Array:
    """Attention of packed rows over themselves: q [B, L, H, hd], k/v [B, L, KV, hd], segment_ids [B, L]
    -> [B, L, H, hd]; inside a segment, causal by in-row index when `causal`. The fused kernels read
    the segment ids; the others a [B, L, L] mask, `mask` if given (the decoder builds it once for all
    layers) or built here."""
    impl = resolve_impl(impl)
    if impl in FUSED_IMPLS:
        return fused_attention(q, k, v, segment_ids, causal=causal, impl=impl, blocks=blocks)
    if mask is None:
        idx = jnp.broadcast_to(jnp.arange(q.shape[1])[None], segment_ids.shape)
        mask = segment_causal_mask(segment_ids, segment_ids, idx, idx, causal)
    return attention(q, k, v, mask, impl if causal or impl != "blocked" else "xla")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, impl: str = "xla") -> jax.Array:
    """q [B, Lq, H, hd], k/v [B, Lk, KV, hd], mask [B, Lq, Lk] bool -> [B, Lq, H, hd].

    Grouped-query attention by reshaping the query heads into [KV, H/KV] groups (no K/V copies).
    `blocked` is for causal self-attention only (training, prefill): query block i attends to the
    key prefix ending with block i, so blocks above the diagonal are never computed.
    """
    b, lq, h, hd = q.shape
    kv = k.shape[2]
    if impl == "dot_product":
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :], implementation="xla")
    if impl == "blocked":
        if lq != k.shape[1] or lq <= CAUSAL_BLOCK:
            return attention(q, k, v, mask)
        outs = []
        for start in range(0, lq, CAUSAL_BLOCK):
            end = min(start + CAUSAL_BLOCK, lq)
            outs.append(attention(q[:, start:end], k[:, :end], v[:, :end], mask[:, start:end, :end]))
        return jnp.concatenate(outs, axis=1)
    if impl != "xla":
        raise ValueError(f"unknown masked attention impl '{impl}' (known: {', '.join(MASK_IMPLS)})")
    qg = q.reshape(b, lq, kv, h // kv, hd)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, precision=_precision(q.dtype)).astype(jnp.float32)
    scores = scores / math.sqrt(hd)
    scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v, precision=_precision(q.dtype))
    return out.reshape(b, lq, h, hd)


def _precision(dtype):
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
