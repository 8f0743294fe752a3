"""MobileVLM's lightweight downsample projector (`ldpnet`, used by MobilePALO-1.7B).

Linear -> GELU -> Linear, then two MobileNetV3 inverted-residual blocks on the 2-D patch grid
(depthwise 3x3 conv, LayerNorm, Hardswish, squeeze-excite with Hardsigmoid, pointwise conv,
LayerNorm); the first has stride 1 and a residual, the second stride 2 (576 -> 144 tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlm_jax.image_layout import grid_side
from vlm_jax.models.layers import dense, gelu_mlp, kernel_init, layer_norm, single_crop


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible (squeeze channels of the SE block)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    channels: int
    stride: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, C]
        c = self.channels
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        prec = jax.lax.Precision.HIGHEST if jnp.dtype(self.dtype) == jnp.float32 else None
        h = nn.Conv(c, (3, 3), strides=(self.stride, self.stride), padding=((1, 1), (1, 1)), feature_group_count=c,
                    use_bias=False, kernel_init=kernel_init(None, None, None, "embed"), precision=prec,
                    name="dw_conv", **kw)(x)
        h = jax.nn.hard_swish(layer_norm(1e-5, name="dw_norm", **kw)(h))
        squeeze = make_divisible(c // 4, 8)
        s = jnp.mean(h, axis=(1, 2), keepdims=True)
        s = jax.nn.relu(dense(squeeze, ("embed", None), name="se_fc1", **kw)(s))
        s = jax.nn.hard_sigmoid(dense(c, (None, "embed"), name="se_fc2", **kw)(s))
        h = h * s
        h = dense(c, ("embed", None), name="project", use_bias=False, **kw)(h)
        h = layer_norm(1e-5, name="project_norm", **kw)(h)
        return x + h if self.stride == 1 else h


class LDPProjector(nn.Module):
    out_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:  # [N, 1, T, C]
        x = single_crop(features).astype(self.dtype)
        n, t, _ = x.shape
        side = grid_side(t)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = gelu_mlp(x, self.out_dim, **kw)
        x = x.reshape(n, side, side, self.out_dim)
        x = InvertedResidual(self.out_dim, 1, name="block_1", **kw)(x)
        x = InvertedResidual(self.out_dim, 2, name="block_2", **kw)(x)
        return x.reshape(n, -1, self.out_dim)
