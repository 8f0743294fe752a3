"""Device mesh, logical-axis sharding rules, param/batch shardings and multi-host helpers.

Mesh axes are `data`, `fsdp`, `tensor`. Parameters are sharded through the logical axis names
they carry (`nn.with_logical_partitioning`) and `MeshConfig.rules`; the batch over (data, fsdp).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from vlm_jax.config import ConfigError, DistributedConfig, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


# ----------------------------------------------------------------------------- mesh


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes with at most one -1 filled in; ConfigError if they cannot cover `num_devices`."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    for name, s in zip(MESH_AXES, sizes):
        if s == 0 or s < -1:
            raise ConfigError(f"mesh.{name}: must be a positive size or -1 (fill), got {s}")
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ConfigError("mesh: at most one of data/fsdp/tensor may be -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh: {num_devices} devices cannot be split into data*fsdp*tensor with fixed axes of size {fixed}"
            )
        sizes[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"mesh: data*fsdp*tensor = {cfg.data}*{cfg.fsdp}*{cfg.tensor} = {fixed} does not match "
            f"the {num_devices} available devices"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[Any]] = None, topology_order: bool = False) -> Mesh:
    """`topology_order`: `devices` are a whole slice (e.g. a TPU topology's compile-only devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    arr = None
    whole = topology_order or len(devices) == jax.device_count()
    if whole and devices[0].platform in ("tpu", "gpu"):
        try:  # physical-topology-aware order (ICI rings) on accelerators
            from jax.experimental import mesh_utils

            arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except Exception:  # noqa: BLE001 - fall back to the plain order
            arr = None
    if arr is None:
        arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_axis_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


# ----------------------------------------------------------------------------- rules and shardings


def logical_rules(cfg: MeshConfig) -> tuple[tuple[str, Any], ...]:
    """`MeshConfig.rules` (name -> axis | [axes] | null) as flax's rule tuples."""
    out = []
    for name, axes in cfg.rules.items():
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
            bad = [a for a in axes if a not in MESH_AXES]
        else:
            bad = [axes] if axes is not None and axes not in MESH_AXES else []
        if bad:
            raise ConfigError(f"mesh.rules.{name}: unknown mesh axis {bad[0]!r} (known: {', '.join(MESH_AXES)})")
        out.append((name, axes))
    return tuple(out)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide (those dimensions are replicated)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = math.prod(mesh.shape[a] for a in names)
        fitted.append(axes if dim % size == 0 else None)
    return P(*fitted)


def logical_specs(boxed_tree: Any) -> Any:
    """Per-leaf PartitionSpec of logical names (P() for leaves without names)."""
    return nn.get_partition_spec(boxed_tree)


def shardings_from_logical(specs: Any, shapes: Any, mesh: Mesh, rules) -> Any:
    """Logical PartitionSpecs + (abstract) arrays -> NamedShardings on `mesh`."""

    def one(spec, leaf):
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec is not None else P()
        return NamedSharding(mesh, _fit(mesh_spec, leaf.shape, mesh))

    return jax.tree.map(one, specs, shapes, is_leaf=lambda x: isinstance(x, P) or x is None)


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules) -> tuple[Any, Any]:
    """(unboxed abstract params, their NamedShardings) from a boxed (eval_shape'd) param tree."""
    shapes = nn.unbox(boxed_abstract)
    return shapes, shardings_from_logical(logical_specs(boxed_abstract), shapes, mesh, rules)


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def opt_state_shardings(abstract_opt_state: Any, abstract_params: Any, param_sh: Any, mesh: Mesh) -> Any:
    """Optimizer-state shardings: a leaf whose path ends with a param's path (and has its shape)
    follows that param's sharding (Adam moments); everything else (counts) is replicated."""
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_sh)):
        by_path[_names(path)] = (tuple(leaf.shape), sh)
    rep = NamedSharding(mesh, P())

    def one(path, leaf):
        names = _names(path)
        for i in range(len(names)):
            hit = by_path.get(names[i:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return rep

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings (for eval_shape / lowering / Orbax restore targets)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# ----------------------------------------------------------------------------- multi-host


def _auto_cluster() -> bool:
    env = os.environ
    if env.get("SLURM_NTASKS") and int(env.get("SLURM_NTASKS", "1")) > 1 and env.get("SLURM_JOB_ID"):
        return True
    return bool(env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS")) and "," in env.get(
        "TPU_WORKER_HOSTNAMES", ","
    )


def initialize_distributed(cfg: Optional[DistributedConfig] = None) -> bool:
    """`jax.distributed.initialize` with explicit coordinator flags, or auto on TPU pods / SLURM.

    Returns whether a multi-process runtime was initialized. Must run before any JAX computation.
    """
    cfg = cfg or DistributedConfig()
    explicit = cfg.coordinator_address is not None
    if not explicit and not _auto_cluster():
        return False
    # CPU cross-process collectives need gloo; harmless on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        if cfg.num_processes is None or cfg.process_id is None:
            raise ConfigError("distributed: coordinator_address needs num_processes and process_id")
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
        )
    else:
        jax.distributed.initialize()
    return True


def process_rows(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows whose shards live on this process."""
    idx = sharding.addressable_devices_indices_map((global_rows,))
    spans = sorted({(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop) for s in idx.values()})
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start:
        raise ValueError(f"process {jax.process_index()} owns non-contiguous batch rows {spans}")
    return start, stop


def global_batch(local: dict, mesh: Mesh, global_rows: int) -> dict:
    """Host-local numpy batch (this process's rows) -> global jax.Arrays sharded over (data, fsdp)."""
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        sh = batch_sharding(mesh, v.ndim)
        out[k] = jax.make_array_from_process_local_data(sh, v, (global_rows,) + v.shape[1:])
    return out
