"""Projectors that reshape the patch grid: VILA's `mlp_downsample`, Centurio's `multiscale-pool`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlm_jax.image_layout import grid_side
from vlm_jax.models.layers import gelu_mlp, layer_norm, single_crop


DOWNSAMPLE_ORDERS = ("vila1.5", "nvila")


def flat_square(x: jax.Array, order: str = "vila1.5") -> jax.Array:
    """VILA's DownSampleBlock.flat_square: zero-pad to even, 2x2 space-to-channel (its exact order). Since
    VILA's NVILA release it permutes the 2x2 grid back (`order="nvila"`)."""
    if order not in DOWNSAMPLE_ORDERS:
        raise ValueError(f"downsample_order {order!r} (one of {', '.join(DOWNSAMPLE_ORDERS)})")
    n, a, b, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, a % 2), (0, b % 2), (0, 0)))
    n, a, b, c = x.shape
    x = x.reshape(n, a, b // 2, 2 * c).transpose(0, 2, 1, 3)
    x = x.reshape(n, b // 2, a // 2, 4 * c)
    return x.transpose(0, 2, 1, 3) if order == "nvila" else x


class DownsampleProjector(nn.Module):
    out_dim: int
    order: str = "vila1.5"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:  # [N, 1, T, C]
        x = single_crop(features).astype(self.dtype)
        n, t, c = x.shape
        side = grid_side(t)
        x = flat_square(x.reshape(n, side, side, c), self.order).reshape(n, -1, 4 * c)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layer_norm(1e-5, name="norm", **kw)(x)
        return gelu_mlp(x, self.out_dim, **kw)


class MultiscalePoolProjector(nn.Module):
    """Crop 0 is the global view, crops 1..s*s the tiles in row-major order. The tiles are stitched
    into one (s*g)x(s*g) grid, average-pooled by s back to gxg, and concatenated channel-wise with the
    global view's features before Linear -> GELU -> Linear."""

    out_dim: int
    scale: int = 2
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:  # [N, 1 + s*s, T, C]
        x = features.astype(self.dtype)
        n, k, t, c = x.shape
        s = self.scale
        if k != 1 + s * s:
            raise ValueError(f"multiscale-pool with multi_scale={s} needs {1 + s * s} crops per image, got {k}")
        g = grid_side(t)
        glob = x[:, 0].reshape(n, g, g, c)
        tiles = x[:, 1:].reshape(n, s, s, g, g, c)  # [n, tile_row, tile_col, y, x, c]
        stitched = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, s * g, s * g, c)
        pooled = stitched.reshape(n, g, s, g, s, c).mean(axis=(2, 4))
        x = jnp.concatenate([glob, pooled], axis=-1).reshape(n, g * g, 2 * c)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        return gelu_mlp(x, self.out_dim, **kw)
