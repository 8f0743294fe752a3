"""Masked next-token cross-entropy (sums over supervised tokens; the caller divides by the count).

Returning sums lets gradient accumulation and multi-host batches divide once by the number of
supervised tokens in the *global* batch, so the loss is the mean over those tokens however the
batch is split.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
    nll: jax.Array  # sum of -log p(target) over supervised tokens
    z: jax.Array  # sum of logsumexp^2 over supervised tokens (z-loss)
    correct: jax.Array  # supervised tokens whose argmax equals the target
    count: jax.Array  # supervised tokens

    @staticmethod
    def zeros() -> "LossSums":
        z = jnp.zeros((), jnp.float32)
        return LossSums(z, z, z, z)

    def __add__(self, other: "LossSums") -> "LossSums":  # type: ignore[override]
        return LossSums(*(a + b for a, b in zip(self, other)))


def _safe_targets(targets: jax.Array, mask: jax.Array, vocab: int) -> jax.Array:
    # unsupervised targets may be sentinels (e.g. -200); keep gathers in range
    return jnp.clip(jnp.where(mask, targets, 0), 0, vocab - 1)


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> LossSums:
    """logits [B, L, V], targets [B, L] int, loss_mask [B, L] (bool or 0/1)."""
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(bool)
    t = _safe_targets(targets, mask, logits.shape[-1])
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    zero = jnp.zeros_like(lse)
    nll = jnp.where(mask, lse - target_logit, zero)
    correct = jnp.where(mask, jnp.argmax(logits, axis=-1) == t, False)
    return LossSums(
        nll.sum(), jnp.where(mask, lse * lse, zero).sum(), correct.sum().astype(jnp.float32), mask.sum().astype(jnp.float32)
    )


def chunked_cross_entropy_sums(
    hidden: jax.Array, kernel: jax.Array, targets: jax.Array, loss_mask: jax.Array, chunk: int
) -> LossSums:
    """Same as `cross_entropy_sums(hidden @ kernel, ...)` without materialising [B, L, V] logits.

    hidden [B, L, D], kernel [D, V] (the lm_head). The vocabulary is processed in chunks with an
    online logsumexp; each chunk is rematerialised in the backward pass, so peak memory holds
    [B, L, chunk] logits instead of [B, L, V].
    """
    d, vocab = kernel.shape
    n = -(-vocab // chunk)
    pad = n * chunk - vocab
    w = jnp.pad(kernel, ((0, 0), (0, pad))).reshape(d, n, chunk).transpose(1, 0, 2)  # [n, D, c]
    mask = loss_mask.astype(bool)
    t = _safe_targets(targets, mask, vocab)
    shape = targets.shape

    @jax.checkpoint
    def body(carry, xs):
        m, s, tgt, best, best_idx = carry
        wc, offset = xs
        logits = jnp.einsum("bld,dc->blc", hidden, wc.astype(hidden.dtype), preferred_element_type=jnp.float32)
        col = offset + jnp.arange(chunk)
        logits = jnp.where(col < vocab, logits, -jnp.inf)
        cmax = logits.max(-1)
        new_m = jnp.maximum(m, cmax)
        s = s * jnp.exp(m - new_m) + jnp.exp(logits - new_m[..., None]).sum(-1)
        local = jnp.clip(t - offset, 0, chunk - 1)
        in_chunk = (t >= offset) & (t < offset + chunk)
        tgt = tgt + jnp.where(in_chunk, jnp.take_along_axis(logits, local[..., None], -1)[..., 0], 0.0)
        carg = jnp.argmax(logits, -1) + offset
        better = cmax > best
        return (new_m, s, tgt, jnp.where(better, cmax, best), jnp.where(better, carg, best_idx)), None

    init = (
        jnp.full(shape, -jnp.inf, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.zeros(shape, jnp.float32),
        jnp.full(shape, -jnp.inf, jnp.float32),
        jnp.zeros(shape, jnp.int32),
    )
    (m, s, tgt, _, arg), _ = jax.lax.scan(body, init, (w, jnp.arange(n, dtype=jnp.int32) * chunk))
    lse = m + jnp.log(s)
    zero = jnp.zeros_like(lse)
    nll = jnp.where(mask, lse - tgt, zero)
    correct = jnp.where(mask, arg == t, False)
    return LossSums(
        nll.sum(), jnp.where(mask, lse * lse, zero).sum(), correct.sum().astype(jnp.float32), mask.sum().astype(jnp.float32)
    )


def gather_supervised(
    hidden: jax.Array, targets: jax.Array, loss_mask: jax.Array, capacity: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each row's first `capacity` supervised positions: hidden [B, L, D] -> [B, C, D], targets and
    mask [B, L] -> [B, C] (unused slots masked out). Rows stay rows, so batch sharding is kept."""

    def row(h, t, m):
        idx = jnp.nonzero(m, size=capacity, fill_value=0)[0]
        return h[idx], t[idx], jnp.arange(capacity) < m.sum()

    return jax.vmap(row)(hidden, targets, loss_mask.astype(bool))


def total_loss(sums: LossSums, num_tokens: jax.Array, z_loss: float = 0.0) -> jax.Array:
    """Mean cross-entropy (+ z_loss * mean lse^2) over `num_tokens` supervised tokens."""
    denom = jnp.maximum(num_tokens, 1.0)
    loss = sums.nll / denom
    if z_loss:
        loss = loss + z_loss * sums.z / denom
    return loss
