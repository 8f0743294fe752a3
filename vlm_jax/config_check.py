"""One pass over a whole Config before anything is built or compiled: every value no run could
use fails here as one ConfigError naming the key (train.main prints it and exits 2).

The owners of the rules keep them: `data.*` in vlm_jax/data/checks.py (the loader runs it too),
the trainable groups and the optimizer in vlm_jax/optim.py (make_optimizer runs it too), the
image layout in vlm_jax/image_layout.py. What no module owns is checked here.
"""

from __future__ import annotations

import glob
import os

from vlm_jax import optim
from vlm_jax.config import Config, ConfigError, TrainConfig
from vlm_jax.data.checks import check_data
from vlm_jax.image_layout import ImageLayout, image_layout
from vlm_jax.models.attention import ATTENTION_IMPLS
from vlm_jax.models.vit import check_position_init
from vlm_jax.sharding import mesh_shape
from vlm_jax.tokenizer import load_tokenizer

NAN_POLICIES = ("stop", "skip")  # train.nan_policy


def check(cfg: Config, *, need_files: bool = True, previous_stage: bool = False) -> None:
    """Values, then (`need_files`: not for compile-only planning) the files the run reads. A stage
    whose init_from is the previous stage's run dir (`previous_stage`) may not have it yet."""
    layout = model_layout(cfg)
    try:
        check_position_init(cfg.model.vision)
    except ValueError as e:
        raise ConfigError(f"model.{e}") from None
    check_data(cfg.data, layout)
    check_train(cfg.train)
    d = cfg.model.decoder
    if cfg.model.image_token_id >= d.vocab_size:
        raise ConfigError(f"model.image_token_id: {cfg.model.image_token_id} is outside the vocabulary "
                          f"(model.decoder.vocab_size {d.vocab_size}); a negative id is a sentinel outside it")
    f = cfg.train.fake_data
    if f.enabled and f.seq_len < max(2 * f.segments_per_row, layout.tokens_per_image + 3 if f.max_images else 2):
        raise ConfigError(f"train.fake_data.seq_len: {f.seq_len} is too short for {f.segments_per_row} segments and "
                          f"an image of {layout.tokens_per_image} placeholders")
    optim.check_optimizer(cfg.train.optimizer, cfg.train.trainable)
    if "lora" in cfg.train.trainable and cfg.model.lora.rank <= 0:
        raise ConfigError("train.trainable: lora needs model.lora.rank > 0")
    check_attention(cfg)
    if need_files:
        check_files(cfg, previous_stage)


def model_layout(cfg: Config) -> ImageLayout:
    try:
        return image_layout(cfg.model)
    except ValueError as e:
        raise ConfigError(f"model.projector: {e}") from None


def check_attention(cfg: Config) -> None:
    if cfg.model.attention not in ATTENTION_IMPLS:
        raise ConfigError(f"model.attention: unknown {cfg.model.attention!r} (known: {', '.join(ATTENTION_IMPLS)})")
    for name, v in vars(cfg.model.attention_blocks).items():
        if v < 0:
            raise ConfigError(f"model.attention_blocks.{name}: must be >= 0 (0 = the kernel's default), got {v}")


def check_train(t: TrainConfig) -> None:
    if t.nan_policy not in NAN_POLICIES:
        raise ConfigError(f"train.nan_policy: must be one of {', '.join(NAN_POLICIES)}, got {t.nan_policy!r}")
    for name, v in (("global_batch_size", t.global_batch_size), ("grad_accum_steps", t.grad_accum_steps),
                    ("checkpoint.every_steps", t.checkpoint.every_steps), ("checkpoint.keep", t.checkpoint.keep),
                    ("logging.every_steps", t.logging.every_steps)):
        if v < 1:
            raise ConfigError(f"train.{name}: must be >= 1, got {v}")
    for name, v in (("loss_vocab_chunk", t.loss_vocab_chunk), ("loss_tokens_per_row", t.loss_tokens_per_row)):
        if v < 0:
            raise ConfigError(f"train.{name}: must be >= 0 (0 = off), got {v}")
    if t.num_steps == 0 or t.num_steps < -1:
        raise ConfigError(f"train.num_steps: must be positive or -1 (from num_epochs), got {t.num_steps}")
    if t.num_steps == -1 and t.fake_data.enabled:
        raise ConfigError("train.num_steps: fake data has no epochs; set a positive number of steps")


def _exists(path: str) -> bool:
    return bool(glob.glob(os.path.expanduser(path))) or os.path.exists(os.path.expanduser(path))


def check_files(cfg: Config, previous_stage: bool = False) -> None:
    t = cfg.train
    if t.init_from and not previous_stage and not _exists(t.init_from):
        raise ConfigError(f"train.init_from: {t.init_from} does not exist")
    if t.fake_data.enabled:
        return
    if not cfg.data.sources:
        raise ConfigError("data.sources: no training data (or set train.fake_data.enabled=true)")
    for kind, sources in (("sources", cfg.data.sources), ("eval_sources", cfg.data.eval_sources)):
        for i, src in enumerate(sources):
            if not src.path or not _exists(src.path):
                raise ConfigError(f"data.{kind}[{i}].path: data file not found: {src.path!r}")
            if src.image_folder and not os.path.isdir(os.path.expanduser(src.image_folder)):
                raise ConfigError(f"data.{kind}[{i}].image_folder: not a directory: {src.image_folder!r}")
    if cfg.data.tokenizer and not _exists(cfg.data.tokenizer):
        raise ConfigError(f"data.tokenizer: not found: {cfg.data.tokenizer!r}")
    if cfg.data.tokenizer:
        check_vocabulary(cfg)


def check_vocabulary(cfg: Config) -> None:
    """Every id the tokenizer can produce must have an embedding row."""
    try:
        tok = load_tokenizer(cfg.data.tokenizer)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.tokenizer: cannot load {cfg.data.tokenizer!r}: {e}") from None
    if tok.vocab_size > cfg.model.decoder.vocab_size:
        raise ConfigError(f"model.decoder.vocab_size: {cfg.model.decoder.vocab_size} is smaller than the tokenizer's "
                          f"{tok.vocab_size} tokens ({cfg.data.tokenizer}): its ids past the embedding would train")


def check_devices(cfg: Config, num_devices: int, process_count: int) -> tuple[int, int, int]:
    """Mesh vs devices and batch divisibility; returns the mesh shape."""
    shape = mesh_shape(cfg.mesh, num_devices)
    data_ways = shape[0] * shape[1]
    t = cfg.train
    if t.global_batch_size % data_ways:
        raise ConfigError(
            f"train.global_batch_size: {t.global_batch_size} is not divisible by the data axes "
            f"(data*fsdp = {shape[0]}*{shape[1]} = {data_ways})"
        )
    if t.global_batch_size % (data_ways * t.grad_accum_steps):
        raise ConfigError(
            f"train.grad_accum_steps: the per-device batch {t.global_batch_size // data_ways} is not divisible "
            f"into {t.grad_accum_steps} micro-batches"
        )
    if t.global_batch_size % process_count:
        raise ConfigError(f"train.global_batch_size: {t.global_batch_size} is not divisible by {process_count} processes")
    return shape
