"""Load a run config (checked by vlm_jax.config_check) and write the resolved one into the run dir."""

from __future__ import annotations

import math
import os
from typing import Optional

from vlm_jax.config import Config, dump_yaml, load, to_dict


def load_config(path: Optional[str], overrides: list[str]) -> Config:
    return load(Config, path, overrides)


def fixed_mesh_devices(cfg: Config) -> int:
    """Devices the mesh needs when no axis is -1 (else 0)."""
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    return 0 if -1 in sizes else math.prod(sizes)


def write_resolved(cfg: Config, run_dir: str) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    dump_yaml(cfg, path)
    return path


def config_dict(cfg: Config) -> dict:
    return to_dict(cfg)
