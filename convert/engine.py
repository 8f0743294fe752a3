"""Streamed import (checkpoint files -> our param tree) and export (CKPT -> safetensors shards).

Layout modules supply the key <-> canonical-name functions (see mapping.py); this module does the
shape checks, the tensor-by-tensor copy, the bookkeeping of unused/missing tensors and the extra
tensors kept aside in the CKPT so that an export reproduces the source exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

from convert import mapping
from convert.files import copy_tokenizer
from convert.tensor_io import ShardedSafetensorsWriter, TensorReader, np_dtype
from vlm_jax import checkpoint
from vlm_jax.checkpoint import load_model_checkpoint
from vlm_jax.config import ModelConfig
from vlm_jax.models.vlm import VLM

EXTRAS = "extra_tensors"  # <CKPT>/extra_tensors.safetensors: source tensors our model does not use
CONVERSION = "conversion.json"  # <CKPT>/conversion.json: source format, layout, dtypes, source configs


class ConversionError(ValueError):
    pass


class UsageError(ValueError):
    """Options that do not fit together (the CLI exits with 2, as argparse does)."""


class BadInput(ConversionError):
    """A source file that cannot be read as what it claims to be (the CLI exits with 2)."""


@dataclass
class Source:
    path: str  # weights file or folder
    to_canonical: Callable[[str], Optional[str]]  # checkpoint key -> canonical name (None: not ours)
    keep_unused: bool = True  # keep unused tensors in the CKPT (the main checkpoint; not helper folders)
    name: str = ""


@dataclass
class ImportResult:
    params: dict
    dtypes: dict  # canonical name -> source dtype
    unused: list = field(default_factory=list)  # (source name, key)
    kept: list = field(default_factory=list)  # extra tensor names written to the CKPT
    fresh: list = field(default_factory=list)  # canonical names initialised fresh


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _report(title: str, names: list[str], limit: int = 40) -> None:
    if names:
        log(f"{title} ({len(names)}):")
        for n in names[:limit]:
            log(f"  {n}")
        if len(names) > limit:
            log(f"  ... and {len(names) - limit} more")


def import_weights(sources: list[Source], cfg: ModelConfig, out_dir: Optional[str], *, dtype: str = "float32",
                   fresh: Optional[Callable[[], dict]] = None, fresh_prefix: str = "projector.",
                   progress: bool = True) -> ImportResult:
    """Read `sources` tensor by tensor into a numpy param tree for `cfg`; unused tensors of sources
    with `keep_unused` go to `<out_dir>/extra_tensors.safetensors` (none when out_dir is None). Entries
    missing from every source are an error, except those under `fresh_prefix` when `fresh()` (-> param subtree) is given."""
    cfg.param_dtype = np_dtype(dtype).name
    entries = {e.key: e for e in mapping.all_entries(cfg)}
    shapes = VLM(cfg).abstract_params()
    readers = [(s, TensorReader(s.path)) for s in sources]
    used: dict[str, tuple[int, str]] = {}  # canonical -> (source idx, key)
    wanted: list[dict] = []  # per source: key -> [(canonical, slice)] (used) or None (kept aside)
    unused, extras_plan = [], []
    for si, (src, reader) in enumerate(readers):
        want = {}
        for info in reader.infos():
            target = src.to_canonical(info.key)
            parts = mapping.pieces(target, tuple(info.shape))
            if parts and all(c in entries and c not in used for c, _, _ in parts):
                for canon, shape, _ in parts:
                    entry = entries[canon]
                    expected = mapping.hf_shape(entry, mapping.get_leaf(shapes, entry.path).shape)
                    if shape != expected:
                        raise ConversionError(
                            f"shape mismatch for tensor '{info.key}' in {info.file}: got {list(info.shape)}, the "
                            f"model config expects {list(expected)} for {canon} (-> params/{'/'.join(entry.path)})")
                    used[canon] = (si, info.key)
                want[info.key] = [(c, sl) for c, _, sl in parts]
                continue
            unused.append((src.name or src.path, info.key))
            if src.keep_unused and out_dir is not None:
                name = target if isinstance(target, str) and target not in entries else f"raw.{info.key}"
                want[info.key] = None
                extras_plan.append((info.key, name, info.shape, info.dtype))
        wanted.append(want)

    missing = [k for k in entries if k not in used]
    fresh_names = [k for k in missing if fresh is not None and k.startswith(fresh_prefix)]
    hard_missing = [k for k in missing if k not in fresh_names]
    if hard_missing:
        _report("missing tensors", hard_missing)
        raise ConversionError(f"{len(hard_missing)} tensors the model needs are missing from the source, "
                              f"e.g. '{hard_missing[0]}'")
    _report("unused source tensors (not part of the model)", [f"{s}: {k}" for s, k in unused])

    out_dtype = np_dtype(dtype)
    params = jax.tree.map(lambda s: np.empty(s.shape, out_dtype), shapes)
    if fresh_names:
        sub = fresh()
        for path in mapping.leaf_paths(sub):
            mapping.set_leaf(params, path, np.asarray(mapping.get_leaf(sub, path), out_dtype))
        log(f"initialised fresh: {', '.join(sorted(fresh_names))}")

    writer = None
    if extras_plan:
        writer = ShardedSafetensorsWriter(out_dir, [(n, s, d) for _, n, s, d in extras_plan],
                                          max_shard_bytes=2**62, prefix=EXTRAS)
    extra_name = {k: n for k, n, _, _ in extras_plan}
    dtypes = {}
    total = sum(len(w) for w in wanted)
    bar = tqdm(total=total, desc="import", unit="tensor", disable=not progress, file=sys.stderr)
    for (src, reader), want in zip(readers, wanted):
        for key, t in reader.iter_tensors(set(want)):
            if want[key] is None:
                writer.write(extra_name[key], t)
            for canon, sl in want[key] or ():
                e = entries[canon]
                leaf = mapping.get_leaf(params, e.path)
                value = mapping.TO_OURS[e.kind](t[sl])
                if e.layer is None:
                    leaf[...] = value
                else:
                    leaf[e.layer] = value
                dtypes[canon] = t.dtype.name
            del t
            bar.update(1)
    bar.close()
    if writer is not None:
        writer.close()
    return ImportResult(params, dtypes, unused, [n for _, n, _, _ in extras_plan], fresh_names)


def write_ckpt(out_dir: str, result: ImportResult, cfg: ModelConfig, source: dict,
               tokenizer_dir: Optional[str] = None) -> None:
    """The model folder of vlm_jax.checkpoint (params, model config, tokenizer, marker last) plus
    conversion.json; the extras file was already written by import_weights."""
    os.makedirs(out_dir, exist_ok=True)
    if not result.kept and os.path.exists(os.path.join(out_dir, f"{EXTRAS}.safetensors")):
        os.remove(os.path.join(out_dir, f"{EXTRAS}.safetensors"))
    meta = {"source": source, "dtypes": result.dtypes, "fresh": result.fresh}
    with open(os.path.join(out_dir, CONVERSION), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    save_model_folder(out_dir, result.params, cfg, tokenizer_dir, {"converted_from": source.get("format")})


def write_imported(out_dir: str, result: ImportResult, cfg: ModelConfig, source: dict, tokenizer_src: str) -> None:
    """write_ckpt with the tokenizer/processor files of folder `tokenizer_src` (none if it has none)."""
    tok = os.path.join(out_dir, "tokenizer")
    shutil.rmtree(tok, ignore_errors=True)
    write_ckpt(out_dir, result, cfg, source, tokenizer_dir=tok if copy_tokenizer(tokenizer_src, tok) else None)


def save_model_folder(directory: str, params: dict, cfg: ModelConfig, tokenizer_dir: Optional[str],
                      metadata: dict) -> None:
    """`vlm_jax.checkpoint.save_model_checkpoint` with bounded memory for host numpy params."""
    checkpoint.save_model_checkpoint(directory, params, cfg, tokenizer_dir, metadata, low_memory=True)


@dataclass
class Ckpt:
    path: str
    params: dict
    cfg: ModelConfig
    conversion: dict  # {} for checkpoints written by training

    @property
    def source(self) -> dict:
        return self.conversion.get("source", {})

    @property
    def extras_path(self) -> Optional[str]:
        p = os.path.join(self.path, f"{EXTRAS}.safetensors")
        return p if os.path.isfile(p) else None

    def extra_names(self) -> list[str]:
        return [i.key for i in TensorReader(self.extras_path).infos()] if self.extras_path else []

    @property
    def tokenizer_dir(self) -> Optional[str]:
        p = os.path.join(self.path, "tokenizer")
        return p if os.path.isdir(p) else None


def read_ckpt(path: str) -> Ckpt:
    params, cfg = load_model_checkpoint(path)
    conv = {}
    if os.path.isfile(os.path.join(path, CONVERSION)):
        with open(os.path.join(path, CONVERSION), encoding="utf-8") as f:
            conv = json.load(f)
    return Ckpt(os.path.abspath(path), params, cfg, conv)


def export_weights(ckpt: Ckpt, out_dir: str, from_canonical: Callable[[str], object], *,
                   keep_extra: Callable[[str], bool] = lambda name: True,
                   fillers: Optional[dict] = None, dtype: Optional[str] = None,
                   max_shard_bytes: int = 5 * 2**30, prefix: str = "model", progress: bool = True,
                   select: Callable[[str], bool] = lambda name: True, writer_cls=ShardedSafetensorsWriter) -> list[str]:
    """Write the params (and the kept extra tensors, and `fillers`: canonical -> array for tensors
    the target format expects but we do not have) as safetensors shards. Tensors take the source
    dtype recorded at import unless `dtype` is given. `from_canonical` returns a key, None (no name in
    the format), a mapping.Part of a fused key or a mapping.Unsqueezed key. Returns the written keys."""
    cfg, params = ckpt.cfg, ckpt.params
    recorded = ckpt.conversion.get("dtypes", {})
    planned: dict[str, dict] = {}  # key -> {"shape", "dtype", "count", "pieces": {index: (kind, what, shape)}}

    def plan(canon: str, shape, dt, job) -> None:
        target = from_canonical(canon)
        if target is None:
            raise ConversionError(f"the target layout has no name for '{canon}'")
        key, index, count = ((target.key, target.index, target.count) if isinstance(target, mapping.Part)
                             else (getattr(target, "key", target), 0, 1))
        p = planned.setdefault(key, {"dtype": dt, "count": count, "pieces": {},
                                     "unsqueeze": isinstance(target, mapping.Unsqueezed)})
        if index in p["pieces"] or p["count"] != count:
            raise ConversionError(f"two tensors map to '{key}'")
        p["pieces"][index] = (job, tuple(shape))

    consumed = set()
    for e in mapping.all_entries(cfg):
        if not select(e.key):
            consumed.add(e.path)
            continue
        leaf = mapping.get_leaf(params, e.path)
        consumed.add(e.path)
        dt = dtype or recorded.get(e.key) or leaf.dtype.name
        plan(e.key, mapping.hf_shape(e, leaf.shape), dt, ("param", e))
    extras = TensorReader(ckpt.extras_path).infos() if ckpt.extras_path else []
    dropped = []
    for info in extras:
        if not select(info.key):
            continue
        if keep_extra(info.key) and from_canonical(info.key) is not None:
            plan(info.key, info.shape, info.dtype, ("extra", info.key))  # kept aside as the source had it
        else:
            dropped.append(info.key)
    written = set(planned)
    for canon, arr in (fillers or {}).items():
        target = from_canonical(canon)
        if select(canon) and target is not None and getattr(target, "key", target) not in written:
            plan(canon, arr.shape, dtype or arr.dtype.name, ("filler", arr))
    _report("extra tensors not exported to this format", dropped)
    _report("params without a checkpoint name (not exported)",
            ["/".join(p) for p in mapping.leaf_paths(params) if p not in consumed])

    items = []
    for key, p in planned.items():
        if len(p["pieces"]) != p["count"]:
            raise ConversionError(f"'{key}' is fused from {p['count']} tensors, only {len(p['pieces'])} exist")
        shapes = [p["pieces"][i][1] for i in range(p["count"])]
        shape = (sum(s[0] for s in shapes), *shapes[0][1:]) if p["count"] > 1 else shapes[0]
        items.append((key, (1, *shape) if p["unsqueeze"] else shape, p["dtype"]))
    writer = writer_cls(out_dir, items, max_shard_bytes=max_shard_bytes, prefix=prefix)
    bar = tqdm(total=len(items), desc="export", unit="tensor", disable=not progress, file=sys.stderr)
    ready: dict[str, dict] = {k: {} for k in planned}

    def put(key: str, index: int, array: np.ndarray) -> None:
        ready[key][index] = np.asarray(array).astype(np_dtype(planned[key]["dtype"]))
        p = planned[key]
        if len(ready[key]) == p["count"]:
            parts = ready.pop(key)
            t = np.concatenate([parts[i] for i in range(p["count"])]) if p["count"] > 1 else parts[0]
            writer.write(key, t[None] if p["unsqueeze"] else t)
            bar.update(1)

    extra_jobs: dict[str, list] = {}
    for key, p in planned.items():
        for index, ((kind, what), _) in p["pieces"].items():
            if kind == "param":
                put(key, index, mapping.to_hf(what, mapping.get_leaf(params, what.path)))
            elif kind == "filler":
                put(key, index, what)
            else:
                extra_jobs.setdefault(what, []).append((key, index))
    if extra_jobs:
        for name, t in TensorReader(ckpt.extras_path).iter_tensors(set(extra_jobs)):
            for key, index in extra_jobs[name]:
                put(key, index, t)
    bar.close()
    writer.close()
    return [k for k, _, _ in items]
