"""Recipes: a YAML listing stages that run in order, each in its own run dir, each resumable,
each starting from the previous stage's result unless it names its own `train.init_from`.

    run_dir: runs/llava15_7b          # stage <name> runs in <run_dir>/<name>
    overrides: [mesh.fsdp=8]          # optional, applied to every stage
    stages:
      - {name: pretrain, config: llava15_7b_pretrain.yaml}
      - {name: finetune, config: llava15_7b_finetune.yaml, overrides: [train.num_steps=100]}

Paths of stage configs are relative to the recipe file. A stage whose `final/` model folder
exists is done and skipped on a rerun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vlm_jax import config_check
from vlm_jax.config import Config, ConfigError, load
from vlm_jax.config_io import parse_override

RECIPE_KEYS = {"run_dir", "stages", "overrides", "base"}
STAGE_KEYS = {"name", "config", "overrides"}


@dataclass
class Stage:
    name: str
    cfg: Config
    follows_previous: bool  # init_from was filled in with the previous stage's run dir


def is_recipe(raw: dict) -> bool:
    return "stages" in raw


def _strings(value, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of key=value strings")
    return list(value)


def load_recipe(path: str, raw: dict, overrides: list[str], need_files: bool = True) -> list[Stage]:
    unknown = sorted(set(raw) - RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown recipe key '{unknown[0]}' (known: {', '.join(sorted(RECIPE_KEYS - {'base'}))})")
    stages_raw = raw["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{path}: stages: expected a non-empty list")
    root = raw.get("run_dir", "runs/recipe")
    # `run_dir=X` on the command line moves the whole recipe (stage <name> runs in X/<name>)
    stage_overrides = []
    for item in overrides:
        key, value = parse_override(item)
        if key == ["run_dir"]:
            root = str(value)
        else:
            stage_overrides.append(item)
    overrides = stage_overrides
    common = _strings(raw.get("overrides"), f"{path}: overrides")
    here = os.path.dirname(os.path.abspath(path))
    stages: list[Stage] = []
    names = set()
    for i, s in enumerate(stages_raw):
        where = f"{path}: stages[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{where}: expected a mapping with name and config")
        bad = sorted(set(s) - STAGE_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key '{bad[0]}' (known: {', '.join(sorted(STAGE_KEYS))})")
        name, cfg_path = s.get("name"), s.get("config")
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"{where}.name: missing or duplicate stage name {name!r}")
        if not isinstance(cfg_path, str):
            raise ConfigError(f"{where}.config: missing config path")
        names.add(name)
        ovr = common + _strings(s.get("overrides"), f"{where}.overrides") + list(overrides)
        cfg = load(Config, os.path.join(here, cfg_path), ovr)
        cfg.run_dir = os.path.join(root, name)
        follows = bool(stages) and not cfg.train.init_from
        if follows:
            cfg.train.init_from = stages[-1].cfg.run_dir
        config_check.check(cfg, previous_stage=follows, need_files=need_files)
        stages.append(Stage(name, cfg, follows))
    return stages


def stage_done(stage: Stage) -> bool:
    from vlm_jax.checkpoint import is_model_checkpoint

    return is_model_checkpoint(os.path.join(stage.cfg.run_dir, "final"))
