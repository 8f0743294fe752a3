"""LLaMA-family decoder: LLaMA-1/2/3, Vicuna, MobileLLaMA, Qwen2 as options of one module.

`DecoderLayer` is usable on its own (`DecoderLayer(cfg).apply({"params": p}, ...)`) so that decoding
can run the layers unrolled over per-layer KV caches while training scans them.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlm_jax.config import AttentionBlocks, DecoderConfig, LoRAConfig
from vlm_jax.models.attention import (FUSED_IMPLS, MASK_IMPLS, apply_rope, attention, resolve_impl, rope_cos_sin,
                                      rope_inv_freq, segment_causal_mask, self_attention)
from vlm_jax.models.layers import RMSNorm, activation, dense, kernel_init, maybe_remat
from vlm_jax.models.lora import LoRADense, targets


class DecoderLayer(nn.Module):
    cfg: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention_impl: str = "xla"
    attention_blocks: Optional[AttentionBlocks] = None
    lora: Optional[LoRAConfig] = None

    def linear(self, features: int, axes: tuple, name: str, use_bias: bool = False):
        kw = dict(use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if targets(self.lora, name):
            return LoRADense(features, axes, self.lora, name=name, **kw)
        return dense(features, axes, name=name, **kw)

    def qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        """Normed input -> rotated q [B,L,H,hd], k [B,L,KV,hd], v [B,L,KV,hd]."""
        c = self.cfg
        b, l, _ = x.shape
        hd = c.dim_per_head
        q = self.linear(c.num_heads * hd, ("embed", "heads"), "q_proj", c.qkv_bias)(x).reshape(b, l, c.num_heads, hd)
        k = self.linear(c.kv_heads * hd, ("embed", "kv_heads"), "k_proj", c.qkv_bias)(x).reshape(b, l, c.kv_heads, hd)
        v = self.linear(c.kv_heads * hd, ("embed", "kv_heads"), "v_proj", c.qkv_bias)(x).reshape(b, l, c.kv_heads, hd)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: Optional[jax.Array],
                 segment_ids: Optional[jax.Array] = None, cache: Optional[dict] = None,
                 cache_index: Optional[jax.Array] = None):
        """x [B,L,D]. Without a cache, self-attention over packed rows: `segment_ids` [B,L] and, for
        the masked backends, `mask` [B,L,L] (None: built from the segment ids). With one (decoding),
        `cache` holds `k`/`v` [B,S,KV,hd], the new keys are written at `cache_index` and `mask` is
        [B,L,S]; `segment_ids`, when given, say the L new keys are all there is (prefill), so the
        fused kernels apply. Returns (x, new_cache)."""
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, l, d = x.shape
        h = RMSNorm(c.rms_norm_eps, name="input_layernorm", **kw)(x)
        q, k, v = self.qkv(h, cos, sin)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
            cache = {"k": k, "v": v}
        impl = resolve_impl(self.attention_impl)
        if segment_ids is not None:
            o = self_attention(q, k, v, segment_ids, impl=impl, blocks=self.attention_blocks, mask=mask)
        else:  # a decode step: one query per row reads the cache once, a fused kernel saves nothing
            o = attention(q, k, v, mask, impl=impl if impl in MASK_IMPLS else "xla")
        o = o.reshape(b, l, c.num_heads * c.dim_per_head)
        o = nn.with_logical_constraint(o, ("batch", "length", "heads"))
        x = x + self.linear(d, ("heads", "embed"), "o_proj")(o)
        h = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(x)
        gate = self.linear(c.intermediate_size, ("embed", "mlp"), "gate_proj")(h)
        up = self.linear(c.intermediate_size, ("embed", "mlp"), "up_proj")(h)
        h = nn.with_logical_constraint(activation(c.hidden_act)(gate) * up, ("batch", "length", "mlp"))
        x = x + self.linear(d, ("mlp", "embed"), "down_proj")(h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, cache


class Decoder(nn.Module):
    cfg: DecoderConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "xla"
    attention_blocks: Optional[AttentionBlocks] = None
    lora: Optional[LoRAConfig] = None

    def setup(self):
        c = self.cfg
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=kernel_init("vocab", "embed"), name="embed_tokens",
        )
        self.norm = RMSNorm(c.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")
        if not c.tie_embeddings:
            self.lm_head = dense(c.vocab_size, ("embed", "vocab"), name="lm_head", use_bias=False,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
        layer_kw = dict(cfg=c, dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl,
                        attention_blocks=self.attention_blocks, lora=self.lora)
        if self.scan_layers:
            self.layers = nn.scan(
                maybe_remat(DecoderLayer, self.remat_policy),
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(**layer_kw, name="layers")
        else:
            layer_cls = maybe_remat(DecoderLayer, self.remat_policy, scanned=False)
            self.layer_list = [layer_cls(**layer_kw, name=f"layers_{i}") for i in range(c.num_layers)]

    def embed(self, tokens: jax.Array) -> jax.Array:
        # Placeholder ids (e.g. LLaVA's -200) are outside the vocabulary; they are overwritten later.
        return self.embed_tokens(jnp.clip(tokens, 0, self.cfg.vocab_size - 1))

    def rope(self, positions: jax.Array):
        c = self.cfg
        return rope_cos_sin(positions, rope_inv_freq(c.dim_per_head, c.rope_theta, c.rope_scaling), self.dtype)

    def hidden(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """Embedded inputs [B,L,D] -> final-normed hidden states [B,L,D]."""
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        cos, sin = self.rope(positions)
        mask = None
        if resolve_impl(self.attention_impl) not in FUSED_IMPLS:  # one [B,L,L] mask for all layers
            idx = jnp.broadcast_to(jnp.arange(x.shape[1])[None], positions.shape)
            mask = segment_causal_mask(segment_ids, segment_ids, idx, idx)
        if self.scan_layers:
            x, _ = self.layers(x, cos, sin, mask, segment_ids)
        else:
            for layer in self.layer_list:
                x, _ = layer(x, cos, sin, mask, segment_ids)
        return self.norm(x)

    def logits(self, h: jax.Array) -> jax.Array:
        if self.cfg.tie_embeddings:
            out = self.embed_tokens.attend(h)
        else:
            out = self.lm_head(h)
        return nn.with_logical_constraint(out.astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        return self.logits(self.hidden(self.embed(tokens), positions, segment_ids))
