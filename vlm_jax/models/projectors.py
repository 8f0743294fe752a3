"""Vision-to-language projectors, registered under the names the original projects use.

A projector maps vision features [N, K, T, C] (N images, K crops each, T tokens of width C) to
[N, tokens_out, D]. Each entry knows its output token count so the data pipeline can lay out
exactly that many placeholders per image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlm_jax.config import ModelConfig
from vlm_jax.models.layers import gelu_mlp


@dataclass(frozen=True)
class ProjectorSpec:
    build: Callable[..., nn.Module]  # (cfg, dtype, param_dtype, name) -> module
    tokens_out: Callable[[ModelConfig], int]
    crops: Callable[[ModelConfig], int] = lambda cfg: 1


_REGISTRY: dict[str, ProjectorSpec] = {}
_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], ProjectorSpec]]] = []


def register(name: str, spec: ProjectorSpec) -> None:
    _REGISTRY[name] = spec


def register_pattern(pattern: str, factory: Callable[[re.Match], ProjectorSpec]) -> None:
    _PATTERNS.append((re.compile(pattern), factory))


def get_spec(name: str) -> ProjectorSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, factory in _PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return factory(m)
    known = sorted(_REGISTRY) + [p.pattern for p, _ in _PATTERNS]
    raise ValueError(f"unknown projector type '{name}' (known: {', '.join(known)})")


def build_projector(cfg: ModelConfig, dtype, param_dtype, name: str = "projector") -> nn.Module:
    return get_spec(cfg.projector.type).build(cfg, dtype, param_dtype, name=name)


def tokens_per_image(cfg: ModelConfig) -> int:
    return get_spec(cfg.projector.type).tokens_out(cfg)


def crops_per_image(cfg: ModelConfig) -> int:
    """K: views of each image the projector consumes (1, or a global view + tiles)."""
    return get_spec(cfg.projector.type).crops(cfg)


def _single_crop(features: jax.Array) -> jax.Array:
    if features.shape[1] != 1:
        raise ValueError(f"this projector takes one crop per image, got {features.shape[1]}")
    return features[:, 0]


class MLPProjector(nn.Module):
    """`linear` (depth 1) and LLaVA's `mlpNx_gelu`: Linear, then (GELU, Linear) x (N-1).

    Layers are named linear_1..linear_N (HF's multi_modal_projector.linear_1/linear_2)."""

    out_dim: int
    depth: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x = _single_crop(features).astype(self.dtype)
        return gelu_mlp(x, self.out_dim, self.depth, dtype=self.dtype, param_dtype=self.param_dtype)


class IdentityProjector(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return _single_crop(features).astype(self.dtype)


def _same_count(cfg: ModelConfig) -> int:
    return cfg.vision.num_feature_tokens


def _mlp_spec(depth: int) -> ProjectorSpec:
    return ProjectorSpec(
        build=lambda cfg, dt, pdt, name: MLPProjector(cfg.decoder.hidden_size, depth, dt, pdt, name=name),
        tokens_out=_same_count,
    )


def _identity(cfg, dt, pdt, name):
    if cfg.vision.hidden_size != cfg.decoder.hidden_size:
        raise ValueError(
            f"identity projector needs vision.hidden_size == decoder.hidden_size "
            f"({cfg.vision.hidden_size} != {cfg.decoder.hidden_size})"
        )
    return IdentityProjector(dt, name=name)


register("linear", _mlp_spec(1))
register("identity", ProjectorSpec(build=_identity, tokens_out=_same_count))
register_pattern(r"mlp(\d+)x_gelu", lambda m: _mlp_spec(int(m.group(1))))


def _register_grid_projectors() -> None:
    from vlm_jax.models.grid_projectors import DownsampleProjector, MultiscalePoolProjector, downsample_tokens
    from vlm_jax.models.ldp import LDPProjector, ldp_tokens

    out = lambda cfg: cfg.decoder.hidden_size  # noqa: E731
    register("ldpnet", ProjectorSpec(
        build=lambda cfg, dt, pdt, name: LDPProjector(out(cfg), dt, pdt, name=name),
        tokens_out=lambda cfg: ldp_tokens(cfg.vision.num_feature_tokens),
    ))
    register("mlp_downsample", ProjectorSpec(
        build=lambda cfg, dt, pdt, name: DownsampleProjector(out(cfg), dt, pdt, name=name),
        tokens_out=lambda cfg: downsample_tokens(cfg.vision.num_feature_tokens),
    ))
    register("multiscale-pool", ProjectorSpec(
        build=lambda cfg, dt, pdt, name: MultiscalePoolProjector(out(cfg), cfg.projector.multi_scale, dt, pdt, name=name),
        tokens_out=_same_count,
        crops=lambda cfg: 1 + cfg.projector.multi_scale**2,
    ))


_register_grid_projectors()
