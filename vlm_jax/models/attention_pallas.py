"""Fused attention over packed rows: Pallas splash attention (TPU) and Pallas flash attention (GPU).

Both take `segment_ids` [B, L] and attend only inside a segment (padding, segment 0, is one more
segment, exactly as in the reference einsum), causal by in-row index or not (vision tower), with
grouped-query heads, bf16 or f32 inputs and f32 accumulation, forward and backward (the kernels'
own custom VJPs). L is padded up to the kernel's block with a segment id no row uses.

- TPU (`splash`): `jax.experimental.pallas.ops.tpu.splash_attention` with `SegmentIds` and a causal
  (or full) static mask, blocks skipped above the diagonal; the MHA kernel indexes K/V by
  `head // (H / KV)`, so grouped-query heads need no copies.
- GPU (`flash_gpu`): `jax.experimental.pallas.ops.gpu.attention.mha` (Pallas -> Triton), which masks by
  segment ids inside the kernel. cuDNN through `jax.nn.dot_product_attention` is not used: its public
  API expresses per-row lengths and causal masks but not several segments in one row (the packed
  layout's offsets are private API and Hopper-only). The Triton kernel has one K/V head per query
  head, so grouped-query K/V are repeated to H heads before it (their gradients sum back).

Under a mesh (the train step is traced with its abstract mesh and logical-axis rules in context)
the kernel runs inside `shard_map` over batch (the `batch` rule) and heads (`heads` / `kv_heads`),
as MaxText does, since a Pallas call cannot be partitioned by XLA. On a CPU backend the kernels run
in Pallas interpret mode (the tests).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from vlm_jax.config import AttentionBlocks as Blocks

FUSED_IMPLS = ("splash", "flash_gpu")
PAD_SEGMENT = -1  # segment id of the positions added to reach a whole block (rows use 0..k)
LANES = 128  # splash's K/V blocks are multiples of the TPU lane width


SPLASH_DEFAULT = Blocks(512, 512, 512, 512)  # MaxText's sa_block_* defaults
FLASH_GPU_DEFAULT = Blocks(128, 128, 64, 64)


def platform() -> str:
    """Platform the current trace compiles for: the context mesh's devices (a TPU topology when
    planning on a CPU host), else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def _or(value: int, default: int) -> int:
    return value if value > 0 else default


def _largest_dividing_block(length: int, limit: int, step: int) -> int:
    """Largest multiple of `step` <= limit that divides `length` (a multiple of step)."""
    b = max(step, min(limit, length) // step * step)
    while length % b:
        b -= step
    return b


def _pad_rows(x: jax.Array, length: int, value=0) -> jax.Array:
    pad = length - x.shape[1]
    if not pad:
        return x
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


# ----------------------------------------------------------------------------- per-shard kernels


def _splash_local(q, k, v, seg, *, causal: bool, blocks: Blocks, interpret: bool):
    """q [B, L, H, hd], k/v [B, L, KV, hd], seg [B, L] (L a multiple of every block) -> [B, L, H, hd]."""
    _, length, heads, hd = q.shape
    sizes = splash.BlockSizes(
        block_q=blocks.q, block_kv=blocks.kv, block_kv_compute=blocks.kv,
        block_q_dkv=blocks.q_bwd, block_kv_dkv=blocks.kv_bwd, block_kv_dkv_compute=blocks.kv_bwd,
        block_q_dq=blocks.q_bwd, block_kv_dq=blocks.kv_bwd,
    )
    one = splash_mask.CausalMask((length, length)) if causal else splash_mask.FullMask((length, length))
    kernel = splash.make_splash_mha(splash_mask.MultiHeadMask((one,) * heads), block_sizes=sizes,
                                    head_shards=1, q_seq_shards=1, interpret=interpret)
    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(hd))).astype(q.dtype)  # splash takes pre-scaled queries
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, splash.SegmentIds(s, s)))(
        heads_first(q), heads_first(k), heads_first(v), seg)
    return heads_first(out)


def _flash_gpu_local(q, k, v, seg, *, causal: bool, blocks: Blocks, interpret: bool):
    """As `_splash_local`, for the Pallas GPU kernel."""
    heads, kv_heads, hd = q.shape[2], k.shape[2], q.shape[3]
    if kv_heads != heads:
        k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
    sizes = gpu_attention.BlockSizes(block_q=blocks.q, block_k=blocks.kv, block_q_dkv=blocks.q_bwd,
                                     block_kv_dkv=blocks.kv_bwd, block_q_dq=blocks.q_bwd, block_kv_dq=blocks.kv_bwd)
    return gpu_attention.mha(q, k, v, seg, sm_scale=1.0 / math.sqrt(hd), causal=causal, block_sizes=sizes,
                             interpret=interpret)


def _pow2_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _padded_length_and_blocks(impl: str, length: int, blocks: Blocks) -> tuple[int, Blocks]:
    """Row length padded for the kernel, and the block sizes it runs with."""
    if impl == "splash":
        d = SPLASH_DEFAULT
        padded = -(-length // LANES) * LANES
        fit = lambda b, db: _largest_dividing_block(padded, _or(b, db), LANES)  # noqa: E731
        return padded, Blocks(fit(blocks.q, d.q), fit(blocks.kv, d.kv), fit(blocks.q_bwd, d.q_bwd),
                              fit(blocks.kv_bwd, d.kv_bwd))
    # Triton tiles are powers of two (>= 16), a short row is one tile; the fused backward needs as
    # many query as key blocks, so both use one backward size
    d = FLASH_GPU_DEFAULT
    whole = max(16, 1 << (length - 1).bit_length())
    bq, bkv = (min(_pow2_at_most(_or(b, db)), whole) for b, db in ((blocks.q, d.q), (blocks.kv, d.kv)))
    bwd = min(_pow2_at_most(min(_or(blocks.q_bwd, d.q_bwd), _or(blocks.kv_bwd, d.kv_bwd))), max(bq, bkv))
    top = max(bq, bkv)
    return -(-length // top) * top, Blocks(bq, bkv, bwd, bwd)


# ----------------------------------------------------------------------------- sharding


def _mesh_axes(logical: str, dim: int, mesh) -> Optional[tuple[str, ...]]:
    """Mesh axes the logical-axis rules in context give `logical`, if they divide `dim`."""
    axes = nn.logical_to_mesh_axes((logical,))[0]
    if axes is None:
        return None
    axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    return axes if dim % math.prod(mesh.shape[a] for a in axes) == 0 else None


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
                    impl: str, blocks: Optional[Blocks] = None) -> jax.Array:
    """q [B, L, H, hd], k/v [B, L, KV, hd], segment_ids [B, L] -> [B, L, H, hd] (self-attention)."""
    if impl not in FUSED_IMPLS:
        raise ValueError(f"unknown fused attention '{impl}' (known: {', '.join(FUSED_IMPLS)})")
    length = q.shape[1]
    padded, sizes = _padded_length_and_blocks(impl, length, blocks or Blocks())
    q, k, v = (_pad_rows(x, padded) for x in (q, k, v))
    seg = _pad_rows(segment_ids.astype(jnp.int32), padded, PAD_SEGMENT)
    local = _splash_local if impl == "splash" else _flash_gpu_local
    fn = functools.partial(local, causal=causal, blocks=sizes, interpret=platform() == "cpu")

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        batch = _mesh_axes("batch", q.shape[0], mesh)
        heads = _mesh_axes("heads", q.shape[2], mesh)
        if heads is not None and _mesh_axes("kv_heads", k.shape[2], mesh) != heads:
            heads = None  # query and K/V heads must split the same way to stay grouped
        qkv = P(batch, None, heads, None)
        fn = jax.shard_map(fn, in_specs=(qkv, qkv, qkv, P(batch, None)), out_specs=qkv, check_vma=False)
    return fn(q, k, v, seg)[:, :length]
