"""Load and validate a run config before anything is compiled (errors are one ConfigError line)."""

from __future__ import annotations

import glob
import math
import os
from typing import Optional

from vlm_jax.config import Config, ConfigError, dump_yaml, load, to_dict

NAN_POLICIES = ("stop", "skip")


def load_config(path: Optional[str], overrides: list[str]) -> Config:
    return load(Config, path, overrides)


def fixed_mesh_devices(cfg: Config) -> int:
    """Devices the mesh needs when no axis is -1 (else 0)."""
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    return 0 if -1 in sizes else math.prod(sizes)


def _exists(path: str) -> bool:
    return bool(glob.glob(os.path.expanduser(path))) or os.path.exists(os.path.expanduser(path))


def check_values(cfg: Config, previous_stage: bool = False, need_files: bool = True) -> None:
    """Checks that need no devices: enums, positive sizes, files that must exist (unless
    `need_files` is false, as for compile-only planning)."""
    t = cfg.train
    if t.nan_policy not in NAN_POLICIES:
        raise ConfigError(f"train.nan_policy: must be one of {', '.join(NAN_POLICIES)}, got {t.nan_policy!r}")
    from vlm_jax.optim import GROUPS

    for g in t.trainable:
        if g not in GROUPS:
            raise ConfigError(f"train.trainable: unknown group {g!r} (known: {', '.join(GROUPS)})")
    if not t.trainable:
        raise ConfigError("train.trainable: at least one group must be trainable")
    if "lora" in t.trainable and cfg.model.lora.rank <= 0:
        raise ConfigError("train.trainable: lora needs model.lora.rank > 0")
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
    if t.optimizer.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"train.optimizer.schedule: unknown {t.optimizer.schedule!r} (cosine | linear | constant)")
    if not need_files:
        return
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


def check_devices(cfg: Config, num_devices: int, process_count: int) -> tuple[int, int, int]:
    """Mesh vs devices and batch divisibility; returns the mesh shape."""
    from vlm_jax.sharding import mesh_shape

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


def write_resolved(cfg: Config, run_dir: str) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    dump_yaml(cfg, path)
    return path


def config_dict(cfg: Config) -> dict:
    return to_dict(cfg)
