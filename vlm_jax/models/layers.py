"""Small building blocks shared by the vision tower, projectors and decoder."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

INIT_STD = 0.02  # HF initializer_range


def kernel_init(*axes: str | None) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), axes)


def zeros_init(*axes: str | None) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones_init(*axes: str | None) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def dense(features: int, axes, *, name: str, use_bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32):
    """A flat nn.Dense (params `kernel`/`bias` directly under `name`) with logical axes."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init(*axes),
        bias_init=zeros_init(axes[1]),
        precision=jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None,
        name=name,
    )


def gelu_mlp(x, out_dim: int, depth: int = 2, *, dtype=jnp.float32, param_dtype=jnp.float32):
    """Linear, then (exact GELU, Linear) x (depth - 1), layers named linear_1..linear_<depth>: the
    projector head shared by LLaVA's mlpNx_gelu, LDP, mlp_downsample and multiscale-pool. Call it
    from inside a compact method: the layers become submodules of the caller."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    x = dense(out_dim, (None, "embed"), name="linear_1", **kw)(x)
    for i in range(2, depth + 1):
        x = dense(out_dim, ("mlp", "embed"), name=f"linear_{i}", **kw)(jax.nn.gelu(x, approximate=False))
    return x


def layer_norm(eps: float, *, name: str, dtype=jnp.float32, param_dtype=jnp.float32) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=ones_init("norm"),
        bias_init=zeros_init("norm"),
        name=name,
    )


class RMSNorm(nn.Module):
    """LLaMA RMSNorm: statistics in float32, scaled in the input dtype (as HF LlamaRMSNorm)."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", ones_init("norm"), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(self.dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (known: {', '.join(sorted(ACTIVATIONS))})")
    return ACTIVATIONS[name]


REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


def maybe_remat(module_cls, policy: str, static_argnums=(), *, scanned: bool = True):
    """Wrap a layer class in nn.remat according to the config's policy name ('none' = no remat).

    `scanned`: the layer runs as the body of a layer scan. Only there may XLA's common-subexpression
    elimination see the recomputation (prevent_cse=False, cheaper): a scan body cannot be merged
    with the forward pass. Unrolled layers need prevent_cse=True, else XLA deduplicates the
    recomputed forward with the saved one and keeps every activation (LLaVA-1.5-7B on v5p: 91.8 GiB
    per chip unrolled vs 34.0 scanned)."""
    if policy == "none":
        return module_cls
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy '{policy}' (known: none, {', '.join(REMAT_POLICIES)})")
    return nn.remat(module_cls, policy=REMAT_POLICIES[policy], prevent_cse=not scanned, static_argnums=static_argnums)


def single_crop(features: jax.Array) -> jax.Array:
    """[N, 1, T, C] projector input -> [N, T, C] (a projector that takes no tiles)."""
    if features.shape[1] != 1:
        raise ValueError(f"this projector takes one crop per image, got {features.shape[1]}")
    return features[:, 0]
