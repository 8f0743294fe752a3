"""LoRA on the decoder's linears: y = x W + b + dropout(x) A B * alpha / r (PEFT's numerics).

The base kernel keeps its name and place in the param tree; the adapters sit beside it as
`lora_a` [in, r] and `lora_b` [r, out] (PEFT stores them transposed as lora_A / lora_B).
"""

from __future__ import annotations

import re
from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlm_jax.config import LoRAConfig
from vlm_jax.models.layers import kernel_init, zeros_init


def targets(lora: Optional[LoRAConfig], name: str) -> bool:
    return bool(lora and lora.rank > 0 and any(re.fullmatch(p, name) for p in lora.target_modules))


class LoRADense(nn.Module):
    features: int
    axes: tuple
    lora: LoRAConfig
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        prec = jax.lax.Precision.HIGHEST if jnp.dtype(self.dtype) == jnp.float32 else None
        d_in, r = x.shape[-1], self.lora.rank
        kernel = self.param("kernel", kernel_init(*self.axes), (d_in, self.features), self.param_dtype)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype), precision=prec)
        if self.use_bias:
            y = y + self.param("bias", zeros_init(self.axes[1]), (self.features,), self.param_dtype).astype(self.dtype)
        a = self.param("lora_a", nn.with_logical_partitioning(nn.initializers.he_uniform(), (self.axes[0], None)),
                       (d_in, r), self.param_dtype)
        b = self.param("lora_b", zeros_init(None, self.axes[1]), (r, self.features), self.param_dtype)
        h = x
        if self.lora.dropout > 0 and self.has_rng("dropout"):
            h = nn.Dropout(self.lora.dropout, deterministic=False)(h)
        delta = jnp.dot(jnp.dot(h.astype(self.dtype), a.astype(self.dtype), precision=prec), b.astype(self.dtype), precision=prec)
        return y + delta * (self.lora.alpha / r)


def merged(params: dict, lora: LoRAConfig) -> dict:
    """Fold every (kernel, lora_a, lora_b) into the kernel and drop the adapters; works on stacked
    (scanned) layers too."""
    scale = lora.alpha / lora.rank

    def visit(node):
        if not isinstance(node, dict):
            return node
        if "lora_a" in node and "lora_b" in node:
            out = {k: v for k, v in node.items() if k not in ("lora_a", "lora_b")}
            delta = jnp.einsum("...ir,...ro->...io", node["lora_a"], node["lora_b"], precision="highest")
            out["kernel"] = (node["kernel"] + delta * scale).astype(node["kernel"].dtype)
            return out
        return {k: visit(v) for k, v in node.items()}

    return visit(params)
