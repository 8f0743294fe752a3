"""Streamed tensor reading and writing: safetensors (single or sharded) and PyTorch `.bin`.

Reading never holds more than one file open; `.bin` files go through
`torch.load(weights_only=True, mmap=True)` so no pickled code runs and tensors are paged in
one at a time. Writing produces HF-style sharded safetensors with an index, one tensor at a time.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from convert.files import read_json

DTYPES = ("float32", "bfloat16", "float16")  # what --dtype may ask for
SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

# safetensors dtype codes <-> numpy (bfloat16 via ml_dtypes, which jax ships)
_ST_TO_NP = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
_NP_TO_ST = {v: k for k, v in _ST_TO_NP.items()}


def np_dtype(name: str) -> np.dtype:
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    return np.dtype(getattr(ml_dtypes, name)) if name == "bfloat16" else np.dtype(name)


def torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np_dtype("bfloat16"))
    return t.numpy()


# ----------------------------------------------------------------------------- reading


@dataclass
class TensorInfo:
    key: str
    file: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name


def weight_files(path: str) -> list[str]:
    """The weight files of a checkpoint: a file, or a folder with an index / single weights file."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    for index in (SAFE_INDEX, BIN_INDEX):
        p = os.path.join(path, index)
        if os.path.isfile(p):
            weight_map = (read_json(p) or {}).get("weight_map")
            if not isinstance(weight_map, dict):
                raise BadWeights(f"{p}: no weight_map")
            return [os.path.join(path, name) for name in dict.fromkeys(weight_map.values())]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return [os.path.join(path, name)]
    found = sorted(n for n in os.listdir(path) if n.endswith((".safetensors", ".bin")) and "optimizer" not in n)
    if not found:
        raise FileNotFoundError(f"{path}: no *.safetensors / *.bin weights (nor an index) found")
    return [os.path.join(path, n) for n in found]


class BadWeights(ValueError):
    """A weight file that cannot be read (corrupt, truncated, or not a dict of tensors)."""


class RefusedPickle(BadWeights, pickle.UnpicklingError):
    """A .bin that holds more than tensors: torch.load(weights_only=True) refuses it, nothing is run."""


def _torch_load(path: str):
    """torch.load(weights_only=True), with one-line errors that never pass on torch's advice to load
    the file with weights_only=False (that would run the pickled code)."""
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) serialization cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise RefusedPickle(f"{path}: holds objects other than tensors, which torch.load(weights_only=True) "
                                "refuses (pickled code is never run)") from None
        raise BadWeights(f"{path}: not a PyTorch weights file (unpickling failed)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) and "weights_only" not in str(e) else type(e).__name__
        raise BadWeights(f"{path}: not a readable PyTorch weights file ({reason})") from None


class _File:
    """One open weight file: keys, metadata, tensor loading."""

    def __init__(self, path: str):
        self.path = path
        self.is_safe = path.endswith(".safetensors")
        if self.is_safe:
            from safetensors import SafetensorError, safe_open

            self._errors = (SafetensorError, OSError, ValueError)
            try:
                self._f = safe_open(path, framework="numpy")
            except self._errors as e:
                raise BadWeights(f"{path}: not a valid safetensors file ({str(e).splitlines()[0][:160]})") from None
            self._tensors = None
        else:
            import torch

            self._errors = ()
            obj = _torch_load(path)
            if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
                obj = obj["state_dict"]
            if not isinstance(obj, dict):
                raise BadWeights(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
            self._tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}

    def keys(self) -> list[str]:
        return list(self._f.keys()) if self.is_safe else list(self._tensors)

    def info(self, key: str) -> TensorInfo:
        if self.is_safe:
            sl = self._f.get_slice(key)
            return TensorInfo(key, self.path, tuple(sl.get_shape()), _ST_TO_NP[sl.get_dtype()])
        t = self._tensors[key]
        return TensorInfo(key, self.path, tuple(t.shape), str(t.dtype).replace("torch.", ""))

    def get(self, key: str) -> np.ndarray:
        if not self.is_safe:
            return torch_to_numpy(self._tensors[key])
        try:
            return self._f.get_tensor(key)
        except self._errors as e:
            raise BadWeights(f"{self.path}: tensor '{key}' cannot be read ({str(e).splitlines()[0][:160]})") from None

    def close(self) -> None:
        self._f = None
        self._tensors = None


class TensorReader:
    """Streams the tensors of a checkpoint (file or folder), one file open at a time."""

    def __init__(self, path: str):
        self.path = path
        self.files = weight_files(path)

    def infos(self) -> list[TensorInfo]:
        out = []
        for path in self.files:
            f = _File(path)
            out.extend(f.info(k) for k in f.keys())
            f.close()
        return out

    def iter_tensors(self, keys: Optional[set] = None) -> Iterator[tuple[str, np.ndarray]]:
        """(key, array) for every tensor (or only `keys`); each array is a fresh copy."""
        for path in self.files:
            f = _File(path)
            try:
                for k in f.keys():
                    if keys is None or k in keys:
                        yield k, np.array(f.get(k), copy=True)
            finally:
                f.close()


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a (small) checkpoint, e.g. a stage-1 mm_projector.bin."""
    return dict(TensorReader(path).iter_tensors())


# ----------------------------------------------------------------------------- writing


def _shard_plan(items: list[tuple[str, tuple, str]], max_shard_bytes: int) -> list[list[int]]:
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, dtype) in enumerate(items):
        n = int(np.prod(shape, dtype=np.int64)) * np_dtype(dtype).itemsize
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += n
    return shards


class ShardedSafetensorsWriter:
    """Writes HF-style (sharded) safetensors one tensor at a time.

    The headers are computed up front from the planned names/shapes/dtypes, so each tensor's bytes
    go straight to disk (the safetensors library would need a whole shard in memory). Files are
    standard safetensors (`safe_open` and `from_pretrained` read them).
    One shard -> `<prefix>.safetensors`; several -> `<prefix>-0000i-of-0000n.safetensors` + index.
    """

    def __init__(self, out_dir: str, items: list[tuple[str, tuple, str]], max_shard_bytes: int = 5 * 2**30,
                 prefix: str = "model", metadata: Optional[dict] = None):
        os.makedirs(out_dir, exist_ok=True)
        self.items = {name: (tuple(shape), dtype) for name, shape, dtype in items}
        if len(self.items) != len(items):
            raise ValueError("duplicate tensor names in the write plan")
        plan = _shard_plan(items, max_shard_bytes)
        n = len(plan)
        names = [f"{prefix}.safetensors"] if n == 1 else [f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.paths = [os.path.join(out_dir, nm) for nm in names]
        self.where: dict[str, tuple[int, int, int]] = {}  # name -> (shard, absolute offset, nbytes)
        self.written: set[str] = set()
        self._handles = []
        total = 0
        for shard, (path, idxs) in enumerate(zip(self.paths, plan)):
            header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
            offset = 0
            entries = []
            for i in idxs:
                name, shape, dtype = items[i]
                nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype(dtype).itemsize
                header[name] = {"dtype": _NP_TO_ST[np_dtype(dtype).name], "shape": list(shape),
                                "data_offsets": [offset, offset + nbytes]}
                entries.append((name, offset, nbytes))
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            base = 8 + len(raw)
            fh = open(path, "wb")
            fh.write(struct.pack("<Q", len(raw)) + raw)
            fh.truncate(base + offset)
            self._handles.append(fh)
            for name, off, nbytes in entries:
                self.where[name] = (shard, base + off, nbytes)
            total += offset
        self.index = None
        if n > 1:
            self.index = {"metadata": {"total_size": total},
                          "weight_map": {items[i][0]: names[s] for s, idxs in enumerate(plan) for i in idxs}}
            with open(os.path.join(out_dir, f"{prefix}.safetensors.index.json"), "w", encoding="utf-8") as f:
                json.dump(self.index, f, indent=2, sort_keys=True)
                f.write("\n")

    def write(self, name: str, array: np.ndarray) -> None:
        if name not in self.items:
            raise KeyError(f"tensor '{name}' is not in the write plan")
        shape, dtype = self.items[name]
        array = np.asarray(array, order="C")
        if tuple(array.shape) != shape or array.dtype != np_dtype(dtype):
            raise ValueError(f"tensor '{name}': planned {shape} {dtype}, got {tuple(array.shape)} {array.dtype}")
        shard, offset, nbytes = self.where[name]
        fh = self._handles[shard]
        fh.seek(offset)
        fh.write(array.reshape(-1).view(np.uint8).data)
        self.written.add(name)

    def close(self) -> None:
        for fh in self._handles:
            fh.close()
        missing = set(self.items) - self.written
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {sorted(missing)[:5]}")


class BinShardWriter:
    """PyTorch `.bin` shards (`torch.save` of a dict) with HF's index; a shard is saved as soon as
    all its tensors are written, so memory holds at most the shards being filled."""

    def __init__(self, out_dir: str, items: list[tuple[str, tuple, str]], max_shard_bytes: int = 5 * 2**30,
                 prefix: str = "pytorch_model", metadata: Optional[dict] = None):
        os.makedirs(out_dir, exist_ok=True)
        plan = _shard_plan(items, max_shard_bytes)
        n = len(plan)
        names = [f"{prefix}.bin"] if n == 1 else [f"{prefix}-{i + 1:05d}-of-{n:05d}.bin" for i in range(n)]
        self.paths = [os.path.join(out_dir, nm) for nm in names]
        self.shard_of = {items[i][0]: s for s, idxs in enumerate(plan) for i in idxs}
        self.items = {name: (tuple(shape), dtype) for name, shape, dtype in items}
        self.pending = [{items[i][0] for i in idxs} for idxs in plan]
        self.buffers: list[dict] = [{} for _ in plan]
        if n > 1:
            total = sum(int(np.prod(s, dtype=np.int64)) * np_dtype(d).itemsize for _, s, d in items)
            index = {"metadata": {"total_size": total}, "weight_map": {k: names[s] for k, s in self.shard_of.items()}}
            with open(os.path.join(out_dir, f"{prefix}.bin.index.json"), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")

    def write(self, name: str, array: np.ndarray) -> None:
        import torch

        shape, dtype = self.items[name]
        if tuple(array.shape) != shape or array.dtype != np_dtype(dtype):
            raise ValueError(f"tensor '{name}': planned {shape} {dtype}, got {tuple(array.shape)} {array.dtype}")
        array = np.asarray(array, order="C")
        if dtype == "bfloat16":
            t = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(array.copy())
        s = self.shard_of[name]
        self.buffers[s][name] = t
        self.pending[s].discard(name)
        if not self.pending[s]:
            torch.save(self.buffers[s], self.paths[s])
            self.buffers[s] = {}

    def close(self) -> None:
        left = [n for p in self.pending for n in p]
        if left:
            raise RuntimeError(f"{len(left)} planned tensors were never written, e.g. {left[:5]}")
