"""Checkpoints: training state (Orbax CheckpointManager) and model folders.

Training checkpoints, `<run_dir>/checkpoints/<step>/`:
  params/      Orbax PyTree of the param arrays (sharded save/restore)
  opt_state/   Orbax list of the optimizer-state leaves (structure comes from the optimizer)
  meta/        JSON: step, rng key data, fingerprints of params and opt_state
  data/        one JSON per process: that process's data-iterator state
  config/      JSON: the resolved run config
Saves are async; Orbax writes into a temporary directory and renames it when complete, so an
interrupted save never shows up as a step. On restore, a checkpoint whose files fail to load or
whose arrays do not match the saved fingerprints is set aside (renamed `<step>.corrupt`, with a
warning) for the previous one; nothing is deleted. One written by a different number of processes
is not corrupt: restoring it raises CheckpointMismatch.

Model checkpoint folder (what `convert` writes and `infer` reads; `<run_dir>/final` at the end
of training):
  params/              Orbax PyTree of the (unboxed) param tree
  model_config.yaml    the ModelConfig mapping
  tokenizer/           optional tokenizer files (AutoTokenizer-loadable)
  vlm_jax_model.json   {"format": "vlm_jax.model", "version": 1, ...}; written last = complete
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import warnings
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler

from vlm_jax.config import ConfigError, ModelConfig, dump_yaml, load_model_config

MODEL_MARKER = "vlm_jax_model.json"
MODEL_FORMAT = "vlm_jax.model"


# ----------------------------------------------------------------------------- per-process JSON item


class ProcessJsonHandler(JsonCheckpointHandler):
    """Every process writes/reads its own JSON (data-iterator states differ per host)."""

    def _file(self) -> str:
        return f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    async def _save_fn(self, x, directory):
        (directory / self._file()).write_text(json.dumps(x))

    def restore(self, directory, item=None, args=None):
        path = directory / self._file()
        if not path.exists():
            raise FileNotFoundError(f"{path} not found")
        return json.loads(path.read_text())


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    item: Any = None


# ----------------------------------------------------------------------------- fingerprints


def _bits(x: jax.Array) -> jax.Array:
    size = jnp.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).sum(-1, dtype=jnp.uint32)
    utype = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return jax.lax.bitcast_convert_type(x, utype).astype(jnp.uint32)


@jax.jit
def _fingerprint(leaves: list) -> jax.Array:
    total = jnp.uint32(0)
    for i, x in enumerate(leaves):
        pos = jnp.zeros(x.shape, jnp.uint32)
        stride = 1
        for d in reversed(range(x.ndim)):
            pos = pos + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride % 2**32)
            stride *= x.shape[d]
        w = pos * jnp.uint32(2654435761) + jnp.uint32((i + 1) * 40503 % 2**32)
        total = total + (_bits(x) * w).sum(dtype=jnp.uint32)
    return total


def fingerprint(tree: Any) -> int:
    """Order- and position-sensitive uint32 checksum of every bit of the arrays (sharding-independent)."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]
    if not leaves:
        return 0
    return int(jax.device_get(_fingerprint(leaves)))


# ----------------------------------------------------------------------------- training checkpoints


class CorruptCheckpoint(RuntimeError):
    pass


class CheckpointMismatch(ConfigError):
    """A sound checkpoint this run cannot continue (e.g. written by another number of processes)."""


def free_name(path: str) -> str:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist."""
    out, k = path, 1
    while os.path.exists(out):
        k += 1
        out = f"{path}-{k}"
    return out


def sync_processes(tag: str) -> None:
    """A barrier across the processes of a multi-host run (nothing on one process), so a file
    operation one process did is seen by all before they go on."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)


class TrainCheckpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "params": ocp.StandardCheckpointHandler(),
                "opt_state": ocp.StandardCheckpointHandler(),
                "meta": JsonCheckpointHandler(),
                "config": JsonCheckpointHandler(),
                "data": ProcessJsonHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: dict, data_state: Any, config: dict) -> None:
        step = int(jax.device_get(state["step"]))
        if step in self.manager.all_steps():
            return
        meta = {
            "step": step,
            "rng": [int(v) for v in np.asarray(jax.device_get(state["rng"])).ravel()],
            "params_fingerprint": fingerprint(state["params"]),
            "opt_state_fingerprint": fingerprint(state["opt_state"]),
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state["params"]),
                opt_state=ocp.args.StandardSave(jax.tree.leaves(state["opt_state"])),
                meta=ocp.args.JsonSave(meta),
                config=ocp.args.JsonSave(config),
                data=ProcessJsonSave(data_state),
            ),
            force=True,
        )

    def _restore_step(self, step: int, abstract_state: dict) -> tuple[dict, Any]:
        opt_leaves, opt_def = jax.tree.flatten(abstract_state["opt_state"])
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state["params"]),
                opt_state=ocp.args.StandardRestore(opt_leaves),
                meta=ocp.args.JsonRestore(),
                data=ProcessJsonRestore(),
            ),
        )
        meta = out["meta"]
        state = {
            "step": jax.device_put(jnp.asarray(meta["step"], jnp.int32), abstract_state["step"].sharding),
            "params": out["params"],
            "opt_state": jax.tree.unflatten(opt_def, list(out["opt_state"])),
            "rng": jax.device_put(np.asarray(meta["rng"], np.uint32), abstract_state["rng"].sharding),
        }
        if meta["step"] != step:
            raise CorruptCheckpoint(f"meta says step {meta['step']}")
        if fingerprint(state["params"]) != meta["params_fingerprint"]:
            raise CorruptCheckpoint("params do not match their fingerprint")
        if fingerprint(state["opt_state"]) != meta["opt_state_fingerprint"]:
            raise CorruptCheckpoint("optimizer state does not match its fingerprint")
        return state, out["data"]

    def _check_processes(self, step: int) -> None:
        data = os.path.join(self.directory, str(step), "data")
        written = sorted(f for f in os.listdir(data) if f.startswith("process_")) if os.path.isdir(data) else []
        mine = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if written and mine not in written:
            raise CheckpointMismatch(f"checkpoint {self.directory}/{step} holds the data state of {written[0]} ..., "
                                     f"not of {mine}: resume it with the number of processes that wrote it")

    def set_aside(self, step: int) -> str:
        """Rename a step's folder to `<step>.corrupt` (it is no longer a step); returns the new path."""
        src = os.path.join(self.directory, str(step))
        dst = free_name(src + ".corrupt")
        if jax.process_index() == 0:
            os.rename(src, dst)
        sync_processes(f"vlm_jax_set_aside:{src}")
        self.manager.reload()
        return dst

    def restore_latest(self, abstract_state: dict) -> Optional[tuple[dict, Any]]:
        """Newest loadable checkpoint as (state, data_state); corrupt newer ones are set aside."""
        for step in reversed(self.all_steps()):
            self._check_processes(step)
            try:
                return self._restore_step(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means "not loadable"
                aside = self.set_aside(step)
                warnings.warn(
                    f"checkpoint {self.directory}/{step} is unreadable or corrupt ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); set aside as {aside}, falling back to the "
                    "previous one",
                    stacklevel=2,
                )
        return None

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
        return out["params"]

    def restore_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ----------------------------------------------------------------------------- model folders


def _restore_tree(path: str, abstract: Any = None) -> Any:
    """Orbax PyTree at `path` -> its own tree structure. Leaves whose path and shape match a leaf of
    `abstract` (ShapeDtypeStructs with shardings) land sharded like it (and in its dtype); the rest
    (or everything when `abstract` is None) come back as host numpy arrays."""
    from flax import traverse_util

    ckptr = ocp.PyTreeCheckpointer()
    with _no_step_metadata_warning():
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        want = traverse_util.flatten_dict(abstract, sep="/") if abstract is not None else {}
        flat_meta = traverse_util.flatten_dict(tree, sep="/")
        args = {}
        for k, m in flat_meta.items():
            a = want.get(k)
            if a is not None and tuple(a.shape) == tuple(m.shape) and getattr(a, "sharding", None) is not None:
                args[k] = ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=tuple(a.shape), dtype=a.dtype)
            else:
                args[k] = ocp.RestoreArgs(restore_type=np.ndarray)
        restore_args = traverse_util.unflatten_dict(args, sep="/")
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(item=None, restore_args=restore_args))


@contextlib.contextmanager
def _no_step_metadata_warning():
    """Orbax warns that `<step>/params/` has no _CHECKPOINT_METADATA: its step folder holds it."""
    quiet = logging.Filter()
    quiet.filter = lambda record: "_CHECKPOINT_METADATA" not in record.getMessage()
    logger = logging.getLogger("absl")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def save_model_checkpoint(
    directory: str,
    params: Any,
    model_cfg: ModelConfig,
    tokenizer_dir: Optional[str] = None,
    metadata: Optional[dict] = None,
    low_memory: bool = False,
) -> str:
    """Write a model checkpoint folder (all processes must call it; arrays may be sharded).

    low_memory: host numpy leaves are written in place and uncompressed. Orbax's default deep-copies
    every host array and zstd-compresses all leaves concurrently, transiently ~2x the params (what a
    converter holding a whole model in host memory cannot afford); the folder loads the same way."""
    directory = os.path.abspath(directory)
    params = nn.unbox(params)
    if jax.process_index() == 0:
        if os.path.exists(os.path.join(directory, MODEL_MARKER)):
            os.remove(os.path.join(directory, MODEL_MARKER))
        if os.path.isdir(os.path.join(directory, "params")):
            shutil.rmtree(os.path.join(directory, "params"))
        os.makedirs(directory, exist_ok=True)
    sync_processes(f"vlm_jax_model_checkpoint:{directory}")
    if low_memory:
        registry = ocp.type_handlers.create_type_handler_registry(
            (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
            (jax.Array, ocp.type_handlers.ArrayHandler()))
        handler = ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=registry)
        ocp.Checkpointer(handler).save(epath.Path(directory) / "params", args=ocp.args.PyTreeSave(params))
    else:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(epath.Path(directory) / "params", params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        dump_yaml(model_cfg, os.path.join(directory, "model_config.yaml"))
        if tokenizer_dir:
            dst = os.path.join(directory, "tokenizer")
            if os.path.abspath(tokenizer_dir) != dst:
                shutil.copytree(tokenizer_dir, dst, dirs_exist_ok=True)
        marker = {"format": MODEL_FORMAT, "version": 1, **(metadata or {})}
        with open(os.path.join(directory, MODEL_MARKER), "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=2)
    return directory


def is_model_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MODEL_MARKER))


def load_model_checkpoint(directory: str, abstract_params: Any = None) -> tuple[Any, ModelConfig]:
    """-> (params, model_cfg). Params land on `abstract_params`' shardings if given, else numpy."""
    directory = os.path.abspath(directory)
    if not is_model_checkpoint(directory):
        raise FileNotFoundError(f"{directory} is not a complete vlm_jax model checkpoint (no {MODEL_MARKER})")
    cfg = load_model_config(os.path.join(directory, "model_config.yaml"))
    return _restore_tree(os.path.join(directory, "params"), abstract_params), cfg


def tokenizer_dir(directory: str) -> Optional[str]:
    path = os.path.join(directory, "tokenizer")
    return path if os.path.isdir(path) else None


def checkpoint_steps(run_dir: str) -> list[int]:
    """The steps of `<run_dir>/checkpoints/`, oldest first."""
    folder = os.path.join(run_dir, "checkpoints")
    return sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if os.path.isdir(folder) else []


def step_config(step_dir: str) -> dict:
    """The resolved run config a training checkpoint `<run_dir>/checkpoints/<step>` was saved with."""
    with open(os.path.join(step_dir, "config", "metadata"), encoding="utf-8") as f:
        return json.load(f)


def load_params(path: str, abstract_params: Any = None) -> tuple[Any, ModelConfig]:
    """Params + model config from a model checkpoint folder, a run dir (its `final/` folder, else
    its newest training checkpoint), or a `checkpoints/<step>` folder."""
    from vlm_jax.config import from_dict

    path = os.path.abspath(path)
    if is_model_checkpoint(path):
        return load_model_checkpoint(path, abstract_params)
    if is_model_checkpoint(os.path.join(path, "final")):
        return load_model_checkpoint(os.path.join(path, "final"), abstract_params)
    steps = checkpoint_steps(path)
    if steps:
        path = os.path.join(path, "checkpoints", str(steps[-1]))
    if os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "config")):
        cfg = from_dict(ModelConfig, step_config(path)["model"], prefix="model")
        return _restore_tree(os.path.join(path, "params"), abstract_params), cfg
    raise FileNotFoundError(f"no vlm_jax checkpoint at {path}")
