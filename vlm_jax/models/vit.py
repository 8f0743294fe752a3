"""CLIP and SigLIP vision towers (HF CLIPVisionModel / SiglipVisionModel numerics).

Only the layers up to `select_layer` are held and run: LLaVA reads hidden_states[select_layer], so a
CLIP tower with select_layer=-2 has num_layers-1 layers here (the converter keeps the rest aside).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from typing import Optional

from vlm_jax.config import AttentionBlocks, VisionConfig
from vlm_jax.models.attention import self_attention
from vlm_jax.models.layers import INIT_STD, activation, dense, kernel_init, layer_norm, maybe_remat

POSITION_INITS = ("normal", "sincos2d")


def num_layers_used(cfg: VisionConfig) -> int:
    """hidden_states index LLaVA selects (0 = embeddings, i = after layer i)."""
    idx = cfg.select_layer if cfg.select_layer >= 0 else cfg.num_layers + 1 + cfg.select_layer
    if not 0 <= idx <= cfg.num_layers:
        raise ValueError(f"vision.select_layer={cfg.select_layer} is out of range for {cfg.num_layers} layers")
    return idx


def check_position_init(cfg: VisionConfig) -> None:
    """ValueError naming the key if the tower's position_init cannot be built (config_check runs it
    before anything is compiled)."""
    if cfg.position_init not in POSITION_INITS:
        raise ValueError(f"vision.position_init must be one of {', '.join(POSITION_INITS)}, got '{cfg.position_init}'")
    if cfg.position_init == "sincos2d" and (cfg.hidden_size % 4 or cfg.hidden_size < 8):
        raise ValueError(f"vision.position_init=sincos2d needs hidden_size a multiple of 4 (>= 8), got {cfg.hidden_size}")


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """[grid * grid, width] 2-D sin-cos table for a row-major grid of patches, as big_vision's
    posemb_sincos_2d (MoCo v3, SigLIP): channels [sin x, cos x, sin y, cos y], x the column,
    width/4 frequencies from 1 down to 1/temperature (width a multiple of 4, >= 8)."""
    y, x = np.mgrid[:grid, :grid]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    x, y = np.outer(x.ravel(), omega), np.outer(y.ravel(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


def position_init(cfg: VisionConfig):
    """Initializer of the position embedding [tokens, hidden] (`cfg.position_init`, times its scale);
    a class token's row of the sin-cos table is zero, as in MAE."""
    check_position_init(cfg)
    scale = cfg.position_init_scale
    if cfg.position_init == "normal":
        return nn.with_logical_partitioning(nn.initializers.normal(INIT_STD * scale), (None, "embed"))
    table = sincos_2d(cfg.image_size // cfg.patch_size, cfg.hidden_size) * scale
    if cfg.has_class_token:
        table = np.concatenate([np.zeros((1, cfg.hidden_size)), table])

    def init(key, shape, dtype=jnp.float32):
        del key
        if tuple(shape) != table.shape:
            raise ValueError(f"position embedding shape {tuple(shape)} != sin-cos table {table.shape}")
        return jnp.asarray(table, dtype)

    return nn.with_logical_partitioning(init, (None, "embed"))


class EncoderLayer(nn.Module):
    cfg: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention_impl: str = "xla"
    attention_blocks: Optional[AttentionBlocks] = None

    @nn.compact
    def __call__(self, x: jax.Array, _=None):
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t, d = x.shape
        hd = d // c.num_heads
        h = layer_norm(c.layer_norm_eps, name="layer_norm1", **kw)(x)
        q = dense(d, ("embed", "heads"), name="q_proj", **kw)(h).reshape(b, t, c.num_heads, hd)
        k = dense(d, ("embed", "heads"), name="k_proj", **kw)(h).reshape(b, t, c.num_heads, hd)
        v = dense(d, ("embed", "heads"), name="v_proj", **kw)(h).reshape(b, t, c.num_heads, hd)
        everyone = jnp.ones((b, t), jnp.int32)  # one segment, no causal mask
        o = self_attention(q, k, v, everyone, causal=False, impl=self.attention_impl,
                           blocks=self.attention_blocks).reshape(b, t, d)
        x = x + dense(d, ("heads", "embed"), name="out_proj", **kw)(o)
        h = layer_norm(c.layer_norm_eps, name="layer_norm2", **kw)(x)
        h = dense(c.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(h)
        h = dense(d, ("mlp", "embed"), name="fc2", **kw)(activation(c.hidden_act)(h))
        return x + h, None


class VisionTower(nn.Module):
    """pixels [N, H, W, 3] (normalised float) -> features [N, T, C] of the selected layer."""

    cfg: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat_policy: str = "none"
    attention_impl: str = "xla"
    attention_blocks: Optional[AttentionBlocks] = None

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(
            c.hidden_size,
            kernel_size=(c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            use_bias=c.kind == "siglip",
            kernel_init=kernel_init(None, None, None, "embed"),
            precision=jax.lax.Precision.HIGHEST if jnp.dtype(self.dtype) == jnp.float32 else None,
            name="patch_embedding",
            **kw,
        )(pixels.astype(self.dtype))
        n = x.shape[0]
        x = x.reshape(n, -1, c.hidden_size)
        if c.has_class_token:
            cls = self.param("class_embedding", kernel_init("embed"), (c.hidden_size,), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, c.hidden_size)), x], axis=1)
        pos = self.param("position_embedding", position_init(c), (x.shape[1], c.hidden_size), self.param_dtype)
        x = x + pos.astype(self.dtype)[None]
        if c.kind == "clip":
            x = layer_norm(c.layer_norm_eps, name="pre_layernorm", **kw)(x)
        n_layers = num_layers_used(c)
        if n_layers:
            layer = maybe_remat(EncoderLayer, self.remat_policy)
            x, _ = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(c, name="layers", attention_impl=self.attention_impl, attention_blocks=self.attention_blocks,
              **kw)(x, None)
        if c.has_class_token and c.select_feature == "patch":
            x = x[:, 1:]
        elif c.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"vision.select_feature must be patch or cls_patch, got '{c.select_feature}'")
        return x
