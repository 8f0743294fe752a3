"""A run dir holds one run: resuming is refused when the config changed what is trained, and
`--start-over` sets the earlier run aside (never deletes it)."""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import yaml

from vlm_jax import checkpoint as ckpt_lib
from vlm_jax.config import Config, ConfigError, to_dict

# what a resumed run may change: where things are and how the run is watched, not what it trains
RESUMABLE = ("run_dir", "name", "distributed", "mesh", "train.num_steps", "train.num_epochs", "train.init_from",
             "train.checkpoint", "train.logging", "train.eval", "data.eval_sources", "data.num_workers",
             "data.prefetch", "data.strict", "data.max_consecutive_skips")
RESUMABLE_SOURCE_KEYS = ("path", "image_folder")  # data.sources[i].*: where the data is, not what it is
RUN_ITEMS = ("checkpoints", "metrics.jsonl", "config.yaml", "tensorboard", "final")  # what a run writes


def _flat_config(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat_config(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        entries = {k: v for i, sub in enumerate(tree) for k, v in _flat_config(sub, f"{prefix[:-1]}[{i}].").items()}
        return {prefix[:-1]: len(tree), **entries}  # the count: an entry added or dropped has keys on one side only
    return {prefix[:-1]: tree}


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, leaving out what a resumed run may
    change and keys only one of them has (a config written before the key existed); a list of sections
    counts its entries, so one added or dropped is a change."""
    a, b = _flat_config(old), _flat_config(new)

    def resumable(key: str) -> bool:
        if key.startswith("data.sources[") and key.rsplit(".", 1)[-1] in RESUMABLE_SOURCE_KEYS:
            return True
        return any(key == r or key.startswith(r + ".") or key.startswith(r + "[") for r in RESUMABLE)

    return sorted(k for k in a.keys() & b.keys() if a[k] != b[k] and not resumable(k))


def previous_config(run_dir: str) -> tuple[Optional[dict], str]:
    """The config of the run in `run_dir` and where it is: its newest checkpoint's, else its config.yaml
    when it logged a step (a run that stopped before its first step, e.g. on a bad init_from, holds nothing)."""
    for step in reversed(ckpt_lib.checkpoint_steps(run_dir)):
        step_dir = os.path.join(run_dir, "checkpoints", str(step))
        try:
            return ckpt_lib.step_config(step_dir), step_dir
        except (OSError, ValueError):
            continue  # unreadable: a corrupt checkpoint, set aside when restoring
    path, metrics = os.path.join(run_dir, "config.yaml"), os.path.join(run_dir, "metrics.jsonl")
    if os.path.isfile(path) and os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f), path
    return None, ""


def check_run_dir(cfg: Config) -> None:
    """A run dir holding a run of another config is refused (ConfigError naming the keys), never overwritten."""
    old, where = previous_config(cfg.run_dir)
    if not isinstance(old, dict):
        return
    keys = changed_keys(old, to_dict(cfg))
    if keys:
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        raise ConfigError(f"{cfg.run_dir} holds a run with another config ({where}): {shown} differ; rerun with that "
                          "config to resume it, use another run_dir, or pass --start-over to set it aside")


def set_aside_run(run_dir: str) -> Optional[str]:
    """Move what a run wrote (checkpoints, metrics, config, events, final/) into `<run_dir>/previous`
    (`previous-2`, ... when taken)."""
    items = [n for n in RUN_ITEMS if os.path.exists(os.path.join(run_dir, n))]
    if not items:
        return None
    dst = ckpt_lib.free_name(os.path.join(run_dir, "previous"))
    if jax.process_index() == 0:
        os.makedirs(dst)
        for name in items:
            os.rename(os.path.join(run_dir, name), os.path.join(dst, name))
    ckpt_lib.sync_processes(f"vlm_jax_start_over:{run_dir}")
    return dst
