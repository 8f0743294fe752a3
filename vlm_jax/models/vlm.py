"""The vision-language model: images -> vision tower -> projector -> placeholder positions -> decoder."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vlm_jax.config import ModelConfig
from vlm_jax.image_layout import image_layout
from vlm_jax.models import aligngpt, projectors
from vlm_jax.models.llama import Decoder
from vlm_jax.models.vit import VisionTower


def normalize_images(images: jax.Array, mean, std, dtype) -> jax.Array:
    """uint8 [..., H, W, 3] -> (x/255 - mean) / std in float32, then cast (as HF image processors)."""
    x = images.astype(jnp.float32) * (1.0 / 255.0)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


def merge_image_features(embeds: jax.Array, tokens: jax.Array, features: jax.Array, image_token_id: int) -> jax.Array:
    """Write features [B, M*N, D] into the placeholder positions of embeds [B, L, D], in order."""
    is_image = tokens == image_token_id
    index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    gathered = jnp.take_along_axis(features, index[..., None], axis=1)
    return jnp.where(is_image[..., None], gathered.astype(embeds.dtype), embeds)


class VLM(nn.Module):
    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        self.vision_tower = VisionTower(c.vision, dt, pdt, c.remat_policy, c.attention, c.attention_blocks)
        self.projector = projectors.build_projector(c, dt, pdt, name="projector")
        self.decoder = Decoder(c.decoder, dt, pdt, c.scan_layers, c.remat_policy, c.attention, c.attention_blocks,
                               c.lora)
        if c.aligngpt.enabled:
            self.align_indicators, self.gated_weight_layer = aligngpt.build(c.aligngpt, c.decoder.hidden_size, dt, pdt)

    def encode_images(self, images: jax.Array) -> jax.Array:
        """uint8 [B, M, K, H, W, 3] -> projected features [B, M * N, D]."""
        b, m, k, h, w, ch = images.shape
        v = self.cfg.vision
        pixels = normalize_images(images.reshape(b * m * k, h, w, ch), v.image_mean, v.image_std, jnp.dtype(self.cfg.dtype))
        feats = self.vision_tower(pixels)
        feats = feats.reshape(b * m, k, *feats.shape[1:])
        out = self.projector(feats)
        return out.reshape(b, m * out.shape[1], out.shape[2])

    def embed_inputs(self, batch: dict) -> jax.Array:
        tokens = batch["tokens"]
        x = self.decoder.embed(tokens)
        images = batch.get("images")
        if images is not None and images.shape[1] > 0:
            x = merge_image_features(x, tokens, self.encode_images(images), self.cfg.image_token_id)
        if self.cfg.aligngpt.enabled:
            x = self.insert_align_indicators(x, batch)
        return x

    def insert_align_indicators(self, x: jax.Array, batch: dict) -> jax.Array:
        tokens = batch["tokens"]
        segment_ids, positions = batch.get("segment_ids"), batch.get("positions")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1])[None], tokens.shape)
        images = batch.get("images")
        return aligngpt.insert_indicators(
            self.align_indicators, self.gated_weight_layer, self.cfg.aligngpt, x, tokens,
            image_token_id=self.cfg.image_token_id, tokens_per_image=image_layout(self.cfg).tokens_per_image,
            num_image_slots=0 if images is None else images.shape[1], align_level=batch.get("align_level"),
            segment_ids=jnp.ones_like(tokens) if segment_ids is None else segment_ids,
            positions=positions)

    def __call__(self, batch: dict, return_hidden: bool = False) -> jax.Array:
        tokens = batch["tokens"]
        positions = batch.get("positions")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None], tokens.shape)
        segment_ids = batch.get("segment_ids")
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        h = self.decoder.hidden(self.embed_inputs(batch), positions, segment_ids)
        return h if return_hidden else self.decoder.logits(h)

    # ------------------------------------------------------------------ initialisation helpers

    def dummy_batch(self, batch_size: int = 1) -> dict[str, Any]:
        c = self.cfg
        layout = image_layout(c)
        n = layout.tokens_per_image
        length = n + 2
        tokens = np.zeros((batch_size, length), np.int32)
        tokens[:, 1 : 1 + n] = c.image_token_id
        size = c.vision.image_size
        return {
            "tokens": jnp.asarray(tokens),
            "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (batch_size, length)),
            "segment_ids": jnp.ones((batch_size, length), jnp.int32),
            "images": jnp.zeros((batch_size, 1, layout.crops_per_image, size, size, 3), jnp.uint8),
            "image_mask": jnp.ones((batch_size, 1), bool),
        }

    def init_boxed(self, rng: jax.Array) -> dict:
        """Params with their nn.Partitioned logical-axis boxes."""
        return self.init(rng, self.dummy_batch())["params"]

    def init_params(self, rng: jax.Array) -> dict:
        return nn.unbox(self.init_boxed(rng))

    def abstract_params(self) -> dict:
        """ShapeDtypeStructs of the params, no allocation."""
        return nn.unbox(jax.eval_shape(self.init_boxed, jax.random.key(0)))
