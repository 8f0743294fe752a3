"""Vision-to-language projectors, registered under the names the original projects use.

A projector maps vision features [N, K, T, C] (N images, K crops each, T tokens of width C) to
[N, tokens_out, D]; K and tokens_out are the model's image layout (vlm_jax/image_layout.py), which
the data pipeline lays out without building a model.
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlm_jax.config import ModelConfig
from vlm_jax.image_layout import MLP_GELU
from vlm_jax.models.grid_projectors import DownsampleProjector, MultiscalePoolProjector
from vlm_jax.models.layers import gelu_mlp, single_crop
from vlm_jax.models.ldp import LDPProjector

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}  # type -> build(cfg, dtype, param_dtype, name)
_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], Callable[..., nn.Module]]]] = []


def register(name: str, build: Callable[..., nn.Module]) -> None:
    _REGISTRY[name] = build


def register_pattern(pattern: re.Pattern, factory: Callable[[re.Match], Callable[..., nn.Module]]) -> None:
    _PATTERNS.append((pattern, factory))


def get_builder(name: str) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, factory in _PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return factory(m)
    known = sorted(_REGISTRY) + [p.pattern for p, _ in _PATTERNS]
    raise ValueError(f"unknown projector type '{name}' (known: {', '.join(known)})")


def build_projector(cfg: ModelConfig, dtype, param_dtype, name: str = "projector") -> nn.Module:
    return get_builder(cfg.projector.type)(cfg, dtype, param_dtype, name=name)


class MLPProjector(nn.Module):
    """`linear` (depth 1) and LLaVA's `mlpNx_gelu`: Linear, then (GELU, Linear) x (N-1).

    Layers are named linear_1..linear_N (HF's multi_modal_projector.linear_1/linear_2)."""

    out_dim: int
    depth: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x = single_crop(features).astype(self.dtype)
        return gelu_mlp(x, self.out_dim, self.depth, dtype=self.dtype, param_dtype=self.param_dtype)


class IdentityProjector(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return single_crop(features).astype(self.dtype)


def _mlp(depth: int) -> Callable[..., nn.Module]:
    return lambda cfg, dt, pdt, name: MLPProjector(cfg.decoder.hidden_size, depth, dt, pdt, name=name)


def _identity(cfg, dt, pdt, name):
    if cfg.vision.hidden_size != cfg.decoder.hidden_size:
        raise ValueError(
            f"identity projector needs vision.hidden_size == decoder.hidden_size "
            f"({cfg.vision.hidden_size} != {cfg.decoder.hidden_size})"
        )
    return IdentityProjector(dt, name=name)


register("linear", _mlp(1))
register("identity", _identity)
register_pattern(MLP_GELU, lambda m: _mlp(int(m.group(1))))
register("ldpnet", lambda cfg, dt, pdt, name: LDPProjector(cfg.decoder.hidden_size, dt, pdt, name=name))
register("mlp_downsample", lambda cfg, dt, pdt, name: DownsampleProjector(
    cfg.decoder.hidden_size, cfg.projector.downsample_order, dt, pdt, name=name))
register("multiscale-pool", lambda cfg, dt, pdt, name: MultiscalePoolProjector(
    cfg.decoder.hidden_size, cfg.projector.multi_scale, dt, pdt, name=name))
