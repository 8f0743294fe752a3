"""AlignGPT alignment indicators (Zhao et al. 2024, github.com/AlignGPT-VL/AlignGPT).

Followed from their `src/model/multimodal_components/mm_align.py` and `src/model/aligngpt.py`:
- `AlignIndicator.indicator_embs`: an [8, hidden] parameter (xavier-uniform init). One indicator
  embedding is inserted right after the first token (BOS) of every sample that has an image.
- Pretraining: the indicator is `indicator_embs[similarity]`, the sample's integer level from the
  data (their JSON field `similarity`).
- SFT / inference: `GatedWeightLayer` = Linear(N_IMAGE_TOKEN=576, 256) -> GELU (exact) ->
  Linear(256, 7). Its input is, per image token, the *unnormalised* dot product of the projected
  image feature with the mean of the sample's text token embeddings (the `embed_tokens` output of
  every non-image input token except the first, i.e. BOS; in training that includes the answers,
  at inference it is the prompt): `sum(text) / (count + 1e-8)`. The indicator is
  `softmax(gate) @ indicator_embs[:7] + indicator_embs[7]`.
- Text-only samples get no indicator (their `dummy_forward` only keeps DeepSpeed's graph whole).

Batch contract: `align_level` [B, L] int32, -1 = no indicator, 0..n-2 (n = num_indicators) a
given level, n = "compute with the gate"; only read where `segment_ids > 0`. Without the key the
level is derived from the tokens (`indicator_token_id` -> gate), which is what inference needs.
Everything is per packed segment: a segment's gate sees only that segment's text and its first
image (the reference takes exactly one 576-token image per sample).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vlm_jax.config import NO_INDICATOR, AlignGPTConfig


def gate_level(cfg: AlignGPTConfig) -> int:
    """The `align_level` value meaning "compute the indicator with the gate"."""
    return cfg.num_indicators


def levels_from_tokens(tokens: jax.Array, cfg: AlignGPTConfig) -> jax.Array:
    return jnp.where(tokens == cfg.indicator_token_id, gate_level(cfg), NO_INDICATOR).astype(jnp.int32)


class AlignIndicators(nn.Module):
    num: int
    dim: int
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, "embed"))
        self.indicator_embs = self.param("indicator_embs", init, (self.num, self.dim), self.param_dtype)

    def __call__(self, levels: jax.Array) -> jax.Array:
        return jnp.take(self.indicator_embs, levels, axis=0)

    def lin_comb(self, weights: jax.Array) -> jax.Array:
        e = self.indicator_embs.astype(weights.dtype)
        return weights @ e[:-1] + e[-1]


def _torch_linear(features: int, fan_in: int, name: str, dtype, param_dtype) -> nn.Dense:
    """nn.Linear with torch's default init (AlignGPT builds the gate after HF's post_init, so it
    keeps it): weight and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / fan_in ** 0.5

    def bias_init(key, shape, dt=jnp.float32):
        return jax.random.uniform(key, shape, dt, -bound, bound)

    return nn.Dense(
        features, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                                                 (None, None)),
        bias_init=nn.with_logical_partitioning(bias_init, (None,)),
        precision=jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None)


class GatedWeightLayer(nn.Module):
    hidden: int
    components: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, dots: jax.Array) -> jax.Array:
        """dots [..., N] (per-image-token similarities) -> softmax weights [..., components]."""
        h = _torch_linear(self.hidden, dots.shape[-1], "mlp_0", self.dtype, self.param_dtype)(dots.astype(self.dtype))
        h = jax.nn.gelu(h, approximate=False)
        scores = _torch_linear(self.components, self.hidden, "mlp_2", self.dtype, self.param_dtype)(h)
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)


def image_text_dots(x: jax.Array, is_image: jax.Array, is_text: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """[B, L]: at image positions, x · (mean of x over the text positions of the same segment)."""
    xf = x.astype(jnp.float32)
    w = ((segment_ids[:, :, None] == segment_ids[:, None, :]) & is_text[:, None, :]).astype(jnp.float32)
    text_sum = jnp.einsum("bpq,bqd->bpd", w, xf, precision=jax.lax.Precision.HIGHEST)
    mean = text_sum / (w.sum(-1, keepdims=True) + 1e-8)
    return jnp.where(is_image, jnp.sum(xf * mean, axis=-1), 0.0)


def per_slot(values: jax.Array, is_image: jax.Array, slots: int, n: int) -> jax.Array:
    """[B, L] values at image positions -> [B, slots, n] in image-slot order (placeholders are laid
    out image after image, n each)."""
    b = values.shape[0]
    idx = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, slots * n - 1)
    out = jnp.zeros((b, slots * n), values.dtype)
    out = out.at[jnp.arange(b)[:, None], idx].add(jnp.where(is_image, values, 0))
    return out.reshape(b, slots, n)


def build(cfg: AlignGPTConfig, hidden_size: int, dtype, param_dtype) -> tuple[AlignIndicators, GatedWeightLayer]:
    """The two modules, named as in AlignGPT (top-level param groups `align_indicators`, `gated_weight_layer`)."""
    return (AlignIndicators(cfg.num_indicators, hidden_size, param_dtype, name="align_indicators"),
            GatedWeightLayer(cfg.gate_hidden, cfg.num_indicators - 1, dtype, param_dtype, name="gated_weight_layer"))


def insert_indicators(indicators: AlignIndicators, gate: GatedWeightLayer, cfg: AlignGPTConfig, x: jax.Array,
                      tokens: jax.Array, *, image_token_id: int, tokens_per_image: int, num_image_slots: int,
                      align_level: jax.Array | None, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
    """Write the indicator embedding into the indicator positions of the merged input embeddings x [B, L, D]."""
    if align_level is None:
        align_level = levels_from_tokens(tokens, cfg)
    is_ind = (align_level >= 0) & (segment_ids > 0)
    value = indicators(jnp.clip(align_level, 0, cfg.num_indicators - 1)).astype(jnp.float32)
    if num_image_slots > 0:
        n = tokens_per_image
        is_image = (tokens == image_token_id) & (segment_ids > 0)
        is_text = (segment_ids > 0) & ~is_image & ~is_ind & (positions > 0)
        dots = per_slot(image_text_dots(x, is_image, is_text, segment_ids), is_image, num_image_slots, n)
        slot_ind = indicators.lin_comb(gate(dots))  # [B, M, D]: the gated indicator for each image slot
        # images come in row order, so the images before an indicator belong to earlier segments
        slot = jnp.clip(jnp.cumsum(is_image, axis=1) // n, 0, num_image_slots - 1)
        gated = jnp.take_along_axis(slot_ind, slot[..., None], axis=1)
        value = jnp.where((align_level == gate_level(cfg))[..., None], gated, value)
    return jnp.where(is_ind[..., None], value.astype(x.dtype), x)
