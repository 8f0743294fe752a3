"""AdamW + linear warmup + cosine decay, global-norm clipping, per-group LRs and frozen groups.

Groups: `vision` (params under `vision_tower`), `projector`, `decoder`, `lora` (leaves named
`lora_a`/`lora_b`, wherever they sit). Trainable groups get AdamW with their own schedule;
all other leaves are labelled `frozen` -> `optax.set_to_zero()`, and because `multi_transform`
masks each inner transform, frozen leaves carry no optimizer state.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import optax

from vlm_jax.config import ConfigError, OptimizerConfig

GROUPS = ("vision", "projector", "decoder", "lora", "align_indicators", "gated_weight_layer")  # the last two: AlignGPT
FROZEN = "frozen"
_TOP_LEVEL = {"vision_tower": "vision", "projector": "projector", "decoder": "decoder"}
_LORA_NAMES = ("lora_a", "lora_b")
_NO_DECAY = ("bias", "scale")
# after warmup: (peak, decay steps, final LR as a fraction of the peak) -> schedule
SCHEDULES: dict[str, Callable[[float, int, float], optax.Schedule]] = {
    "cosine": lambda peak, steps, end: optax.cosine_decay_schedule(peak, steps, alpha=end),
    "linear": lambda peak, steps, end: optax.linear_schedule(peak, peak * end, steps),
    "constant": lambda peak, steps, end: optax.constant_schedule(peak),
}


def param_group(path: tuple[str, ...]) -> str:
    if any(p in _LORA_NAMES for p in path):
        return "lora"
    return _TOP_LEVEL.get(path[0], path[0])


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _map_paths(fn: Callable[[tuple[str, ...], Any], Any], params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda path, v: fn(tuple(_key_name(k) for k in path), v), params)


def check_optimizer(cfg: OptimizerConfig, trainable: list[str]) -> None:
    """`train.trainable` and `train.optimizer` (vlm_jax/config_check.py runs it with the whole config)."""
    for g in trainable:
        if g not in GROUPS:
            raise ConfigError(f"train.trainable: unknown group {g!r} (known: {', '.join(GROUPS)})")
    if not trainable:
        raise ConfigError("train.trainable: at least one group must be trainable")
    for g in cfg.group_lr:
        if g not in GROUPS:
            raise ConfigError(f"train.optimizer.group_lr: unknown group {g!r} (known: {', '.join(GROUPS)})")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"train.optimizer.schedule: unknown {cfg.schedule!r} ({' | '.join(SCHEDULES)})")
    rates = {"learning_rate": cfg.learning_rate, **{f"group_lr.{g}": v for g, v in cfg.group_lr.items()}}
    for key, v in rates.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"train.optimizer.{key}: must be a finite number >= 0, got {v!r}")
    for key, v, lo, hi in (("warmup_ratio", cfg.warmup_ratio, 0, 1), ("min_lr_ratio", cfg.min_lr_ratio, 0, 1),
                           ("b1", cfg.b1, 0, 1), ("b2", cfg.b2, 0, 1)):
        if not lo <= v <= hi:
            raise ConfigError(f"train.optimizer.{key}: must be in [{lo}, {hi}], got {v}")
    if not cfg.eps > 0 or not 0 <= cfg.weight_decay < math.inf or math.isnan(cfg.max_grad_norm):
        raise ConfigError("train.optimizer: need eps > 0, a finite weight_decay >= 0 and a max_grad_norm that is a "
                          f"number (got eps={cfg.eps}, weight_decay={cfg.weight_decay}, max_grad_norm={cfg.max_grad_norm})")


def param_labels(params: Any, trainable: list[str]) -> Any:
    """Tree of labels: the group name for trainable leaves, `frozen` for the rest."""
    return _map_paths(lambda path, _: param_group(path) if param_group(path) in trainable else FROZEN, params)


def trainable_mask(params: Any, trainable: list[str]) -> Any:
    return _map_paths(lambda path, _: param_group(path) in trainable, params)


def decay_mask(params: Any) -> Any:
    return _map_paths(lambda path, _: path[-1] not in _NO_DECAY, params)


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps >= 0 else int(round(cfg.warmup_ratio * total_steps))


def lr_schedule(peak: float, cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> peak, then `cfg.schedule` down to min_lr_ratio * peak at total_steps."""
    warm = min(warmup_steps(cfg, total_steps), total_steps)
    decay = max(total_steps - warm, 1)
    main = SCHEDULES[cfg.schedule](peak, decay, cfg.min_lr_ratio)
    if warm == 0:
        return main
    # HF's get_cosine_schedule_with_warmup: lr(step) = peak * step / warmup during warmup
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), main], [warm])


def group_schedules(cfg: OptimizerConfig, trainable: list[str], total_steps: int) -> dict[str, optax.Schedule]:
    return {g: lr_schedule(float(cfg.group_lr.get(g, cfg.learning_rate)), cfg, total_steps) for g in trainable}


def make_optimizer(cfg: OptimizerConfig, trainable: list[str], total_steps: int):
    """-> (optax transform over the full param tree, {group: schedule})."""
    check_optimizer(cfg, trainable)
    schedules = group_schedules(cfg, trainable, total_steps)
    transforms = {
        g: optax.adamw(s, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
        for g, s in schedules.items()
    }
    transforms[FROZEN] = optax.set_to_zero()
    tx = optax.multi_transform(transforms, lambda p: param_labels(p, trainable))
    if cfg.max_grad_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), tx)
    return tx, schedules


def param_counts(params: Any, trainable: list[str]) -> tuple[int, int]:
    """(all parameters, those in the trainable groups)."""
    return count_params(params), count_params(params, trainable_mask(params, trainable))


def count_params(params: Any, mask: Any = None) -> int:
    leaves = jax.tree.leaves(params)
    if mask is None:
        return sum(int(x.size) for x in leaves)
    return sum(int(x.size) for x, m in zip(leaves, jax.tree.leaves(mask)) if m)
