"""A tiny stand-in with the VLM interface and param tree, for training-machinery tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm_jax.config import Config, DecoderConfig, ModelConfig, VisionConfig


def _dense(features, names, name):
    return nn.Dense(features, name=name, kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.05), names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[-1],)))


class _Block(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, h, seg):
        scale = self.param("norm_scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (self.dim,))
        x = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + 1e-6) * scale
        L = h.shape[1]
        causal = jnp.tril(jnp.ones((L, L), bool))[None]
        allowed = causal & (seg[:, :, None] == seg[:, None, :])
        q = _dense(self.dim, ("embed", "heads"), "q")(x)
        scores = jnp.einsum("bqd,bkd->bqk", q, x) / jnp.sqrt(self.dim)
        scores = jnp.where(allowed, scores, -1e9)
        h = h + jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(scores, -1), x)
        y = _dense(2 * self.dim, ("embed", "mlp"), "up")(h)
        return h + _dense(self.dim, ("mlp", "embed"), "down")(nn.gelu(y)), None


class _Vision(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images):  # [n, H, W, 3] uint8
        v = self.cfg.vision
        x = images.astype(jnp.float32) / 255.0
        n, H, W, C = x.shape
        p = v.patch_size
        x = x.reshape(n, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, p * p * C)
        x = _dense(v.hidden_size, (None, "embed"), "patch_embed")(x)
        return x + _dense(v.hidden_size, ("embed", "mlp"), "mix")(nn.gelu(x)).mean(-1, keepdims=True)


class _Decoder(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, feats, seg, return_hidden):
        d = self.cfg.decoder
        embed = nn.Embed(d.vocab_size, d.hidden_size, name="embed_tokens",
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.05), ("vocab", "embed")))
        is_img = tokens == self.cfg.image_token_id
        h = embed(jnp.where(is_img, 0, tokens))
        B = tokens.shape[0]
        flat = feats.reshape(B, -1, d.hidden_size)
        idx = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, flat.shape[1] - 1)
        h = jnp.where(is_img[..., None], jnp.take_along_axis(flat, idx[..., None], 1), h)
        Stack = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                        length=d.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        h, _ = Stack(d.hidden_size, name="layers")(h, seg)
        scale = self.param("norm", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d.hidden_size,))
        h = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + 1e-6) * scale
        if return_hidden:
            return h
        k = self.param("lm_head", nn.with_logical_partitioning(nn.initializers.normal(0.05), ("embed", "vocab")),
                       (d.hidden_size, d.vocab_size))
        return (h @ k).astype(jnp.float32)


class StandInVLM(nn.Module):
    cfg: ModelConfig

    @staticmethod
    def tokens_per_image(cfg: ModelConfig) -> int:
        return cfg.vision.num_patches

    def setup(self):
        self.vision_tower = _Vision(self.cfg)
        self.projector = _dense(self.cfg.decoder.hidden_size, (None, "embed"), "projector")
        self.decoder = _Decoder(self.cfg)

    def __call__(self, batch, return_hidden=False):
        imgs = batch["images"]
        B, M, K, H, W, C = imgs.shape
        f = self.vision_tower(imgs.reshape(B * M * K, H, W, C))
        f = self.projector(f).reshape(B, M * K * f.shape[1], -1)
        return self.decoder(batch["tokens"], f, batch["segment_ids"], return_hidden)

    def init_params(self, rng):
        return nn.unbox(self.init_boxed(rng))

    def init_boxed(self, rng, batch_size=1):
        v = self.cfg.vision
        n = self.tokens_per_image(self.cfg)
        batch = {
            "tokens": jnp.zeros((batch_size, n + 4), jnp.int32),
            "segment_ids": jnp.ones((batch_size, n + 4), jnp.int32),
            "positions": jnp.zeros((batch_size, n + 4), jnp.int32),
            "images": jnp.zeros((batch_size, 1, 1, v.image_size, v.image_size, 3), jnp.uint8),
            "image_mask": jnp.ones((batch_size, 1), bool),
        }
        return self.init(rng, batch)["params"]


def lm_head_path():
    return ("decoder", "lm_head")


def tiny_model_config(**over) -> ModelConfig:
    from vlm_jax.config import DecoderConfig, VisionConfig

    cfg = ModelConfig(
        vision=VisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
        decoder=DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4),
        image_token_id=-200,
    )
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def tiny_config(**train) -> Config:
    cfg = Config(model=ModelConfig(
        vision=VisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=2),
        decoder=DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4),
    ))
    t = cfg.train
    t.fake_data.enabled, t.fake_data.seq_len = True, 24
    t.global_batch_size, t.num_steps = 8, 10
    t.optimizer.learning_rate, t.optimizer.warmup_steps = 3.0e-3, 1
    for k, v in train.items():
        setattr(t, k, v)
    return cfg
