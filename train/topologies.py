"""TPU slices by the names MaxText's accelerator table uses (v4-8, v5e-16, v5p-128, v6e-256, ...) and
their compile-only devices: libtpu's compiler runs on any host, so a train step can be compiled for
a slice no one has (`--compile-only --topology NAME`).

Shapes, chip configs and wrap-around links are MaxText's (src/maxtext/utils/accelerator_to_spec_map.py,
AI-Hypercomputer/maxtext@e591f30); HBM per chip is the chip's capacity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vlm_jax.config import ConfigError

GIB = 1024**3
INSTALL_HINT = "pip install 'vlm-jax[tpu]' (libtpu)"


@dataclass(frozen=True)
class Generation:
    libtpu_name: str  # topology prefix libtpu knows: v4, v5, v5e, v6e
    chip_config: str  # megacore: one device per chip of two TensorCores (the -N in the name counts cores)
    hbm_gib: float  # per device (chip)


GENERATIONS = {
    "v4": Generation("v4", "megacore", 32.0),
    "v5p": Generation("v5", "megacore", 95.74),
    "v5e": Generation("v5e", "default", 16.0),
    "v6e": Generation("v6e", "default", 32.0),
}

# name -> (chip grid, wrap-around per axis); 3-D tori wrap from 4x4x4 on, 2-D ones along a full 16
SLICES = {
    **{f"v4-{2 * x * y * z}": ((x, y, z), (x >= 4 and y >= 4 and z >= 4,) * 3)
       for x, y, z in ((2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8),
                       (8, 8, 16), (8, 16, 16))},
    **{f"v5p-{2 * x * y * z}": ((x, y, z), (x >= 4 and y >= 4 and z >= 4,) * 3)
       for x, y, z in ((2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8),
                       (8, 8, 16), (8, 16, 16), (16, 16, 16), (16, 16, 24))},
    **{f"{g}-{x * y}": ((x, y, 1), (x == 16, y == 16, False))
       for g in ("v5e", "v6e") for x, y in ((1, 1), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16))},
}


@dataclass(frozen=True)
class Slice:
    name: str
    generation: Generation
    chips: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]

    @property
    def num_devices(self) -> int:
        x, y, z = self.chips
        return x * y * z

    @property
    def libtpu_topology(self) -> str:
        x, y, z = self.chips
        dims = f"{x}x{y}" if self.generation.libtpu_name in ("v5e", "v6e") else f"{x}x{y}x{z}"
        return f"{self.generation.libtpu_name}:{dims}"

    @property
    def hbm_bytes(self) -> int:
        return int(self.generation.hbm_gib * GIB)


def lookup(name: str) -> Slice:
    """The slice called `name`; ConfigError listing the known names otherwise."""
    if name not in SLICES:
        known = ", ".join(sorted(SLICES, key=lambda n: (n.split("-")[0], int(n.split("-")[1]))))
        raise ConfigError(f"--topology: unknown TPU slice {name!r} (known: {known})")
    chips, wrap = SLICES[name]
    return Slice(name, GENERATIONS[name.split("-")[0]], chips, wrap)


def libtpu_available() -> bool:
    from jax._src import cloud_tpu_init  # layers: allow (jax's own libtpu lookup: TPU_LIBRARY_PATH or the libtpu package)

    return cloud_tpu_init.get_tpu_library_path() is not None


def libtpu_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        return "(TPU_LIBRARY_PATH)"


def compile_devices(name: str) -> list:
    """Compile-only devices of the slice (any host; libtpu's compiler). ConfigError without libtpu."""
    s = lookup(name)
    if not libtpu_available():
        raise ConfigError(f"--topology {name}: the TPU compiler is not installed; {INSTALL_HINT}")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another process may hold libtpu
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", name)  # quiets libtpu's host probing
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    import jax
    from jax.experimental import topologies

    if not jax.config.jax_platforms:  # the host's own backend: CPU (no TPU runtime probing)
        jax.config.update("jax_platforms", "cpu")
    x, y, z = s.chips
    bounds = (min(x, 2), min(y, 2), 1)
    return list(topologies.get_topology_desc(
        platform="tpu", topology_name=s.libtpu_topology, chip_config_name=s.generation.chip_config,
        chips_per_host_bounds=bounds, num_slices=1, wrap=s.wrap).devices)
