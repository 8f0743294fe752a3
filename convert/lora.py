"""LoRA adapters of a CKPT: merged into the base weights, dropped, or as a PEFT adapter folder.

A PEFT adapter holds, per adapted linear, `base_model.model.<module>.lora_A.weight` [r, in] and
`lora_B.weight` [out, r], where <module> is the linear's module path in the target format's model
(e.g. `model.language_model.layers.0.self_attn.q_proj` for transformers' LlavaForConditionalGeneration);
our leaves are `lora_a` [in, r] / `lora_b` [r, out] beside the kernel. PEFT's scaling is alpha / r, as ours.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Callable, Optional

import jax
import numpy as np

from convert import engine, mapping
from convert.files import read_json, write_json
from convert.tensor_io import ShardedSafetensorsWriter, TensorReader, np_dtype
from vlm_jax.config import LoRAConfig, ModelConfig
from vlm_jax.models import lora as lora_model
from vlm_jax.models.vlm import VLM

POLICIES = ("merge", "base", "peft")
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def has_adapters(cfg: ModelConfig) -> bool:
    return cfg.lora.rank > 0


def adapted(cfg: ModelConfig) -> list[mapping.Entry]:
    """Decoder linears that carry adapters (the kernel entries)."""
    return [e for e in mapping.decoder_entries(cfg) if e.kind == "linear" and e.path[-1] == "kernel"
            and e.key.startswith("lm.layers.") and lora_model.targets(cfg.lora, e.path[-2])]


def _without_adapters(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, lora=LoRAConfig(rank=0))


def _strip(node):
    if not isinstance(node, dict):
        return node
    return {k: _strip(v) for k, v in node.items() if k not in ("lora_a", "lora_b")}


def apply_policy(ckpt: engine.Ckpt, policy: str) -> engine.Ckpt:
    """merge: fold the adapters into the kernels; base: drop them. A CKPT without adapters is unchanged."""
    if not has_adapters(ckpt.cfg):
        return ckpt
    if policy == "merge":
        params = jax.tree.map(np.asarray, lora_model.merged(ckpt.params, ckpt.cfg.lora))
        engine.log(f"merged LoRA adapters (r={ckpt.cfg.lora.rank}, alpha={ckpt.cfg.lora.alpha}) into the weights")
    elif policy == "base":
        params = _strip(ckpt.params)
    else:
        raise ValueError(f"LoRA policy '{policy}' does not write model weights")
    return dataclasses.replace(ckpt, params=params, cfg=_without_adapters(ckpt.cfg))


def target_regex(cfg: ModelConfig, from_canonical: Callable[[str], Optional[str]]) -> str:
    """PEFT `target_modules` as a regex over full module names, so that same-named linears elsewhere
    (e.g. the vision tower's q_proj) are not adapted."""
    probe = from_canonical("lm.layers.0.self_attn.q_proj.weight")
    if probe is None or "layers.0." not in probe:
        raise engine.ConversionError("the target layout has no decoder layer names")
    prefix = probe.split("layers.0.", 1)[0]
    names = "|".join(f"(?:{p})" for p in cfg.lora.target_modules)
    return re.escape(prefix) + r"layers\.\d+\.(?:self_attn|mlp)\.(?:" + names + ")"


def peft_names(entry: mapping.Entry, from_canonical: Callable[[str], Optional[str]]) -> tuple[str, str]:
    module = from_canonical(entry.key)[: -len(".weight")]
    return f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"


def _lora_leaf(params: dict, entry: mapping.Entry, which: str) -> np.ndarray:
    leaf = mapping.get_leaf(params, entry.path[:-1] + (which,))
    return leaf[entry.layer] if entry.layer is not None else leaf


def export_peft(ckpt: engine.Ckpt, out: str, from_canonical: Callable[[str], Optional[str]], *,
                base_model: Optional[str] = None, dtype: Optional[str] = None) -> list[str]:
    """Write `out/adapter_config.json` + `out/adapter_model.safetensors` for the CKPT's adapters."""
    cfg = ckpt.cfg
    if not has_adapters(cfg):
        raise engine.ConversionError(f"{ckpt.path} has no LoRA adapters (model.lora.rank = 0)")
    entries = adapted(cfg)
    items, arrays = [], []
    for e in entries:
        name_a, name_b = peft_names(e, from_canonical)
        a, b = _lora_leaf(ckpt.params, e, "lora_a"), _lora_leaf(ckpt.params, e, "lora_b")
        dt = np_dtype(dtype) if dtype else a.dtype
        for name, t in ((name_a, a.T), (name_b, b.T)):
            items.append((name, t.shape, dt.name))
            arrays.append((name, np.ascontiguousarray(t.astype(dt))))
    os.makedirs(out, exist_ok=True)
    writer = ShardedSafetensorsWriter(out, items, max_shard_bytes=2**62, prefix="adapter_model")
    for name, t in arrays:
        writer.write(name, t)
    writer.close()
    write_json(os.path.join(out, ADAPTER_CONFIG), {
        "peft_type": "LORA", "task_type": None, "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout, "target_modules": target_regex(cfg, from_canonical), "bias": "none",
        "base_model_name_or_path": base_model, "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {},
    })
    return [n for n, _, _ in items]


# ----------------------------------------------------------------------------- import


def _check_config(conf: dict) -> None:
    if conf.get("peft_type") != "LORA":
        raise engine.ConversionError(f"peft_type {conf.get('peft_type')!r}: only LORA adapters are supported")
    unsupported = [k for k in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "modules_to_save",
                               "layers_to_transform", "lora_bias") if conf.get(k)]
    if conf.get("bias", "none") != "none":
        unsupported.append("bias")
    if unsupported:
        raise engine.ConversionError(f"adapter options not supported: {', '.join(unsupported)}")


def _canonical_lora(keys: list[str], module_keys: list[Callable[[str], Optional[str]]]) -> dict[str, tuple[str, str]]:
    """PEFT keys -> {canonical kernel name: (lora_A key, lora_B key)}, with the first of `module_keys`
    (module key -> canonical) that names every adapted module a decoder linear."""
    modules = {}
    for k in keys:
        m = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+)\.lora_([AB])(?:\.default)?\.weight", k)
        if not m:
            raise engine.ConversionError(f"unexpected tensor '{k}' in the adapter (only lora_A / lora_B)")
        modules.setdefault(m.group(1), {})[m.group(2)] = k
    for to_canonical in module_keys:
        canon = {m: to_canonical(m + ".weight") for m in modules}
        if all(c and re.fullmatch(r"lm\.layers\.\d+\.(self_attn|mlp)\.\w+\.weight", c) for c in canon.values()):
            return {canon[m]: (ab.get("A"), ab.get("B")) for m, ab in modules.items()}
    raise engine.ConversionError(f"adapter module names are not decoder linears of a known layout, e.g. "
                                 f"'{next(iter(modules))}'")


def import_peft(src: str, base: str, out: str, module_keys: list[Callable[[str], Optional[str]]]) -> ModelConfig:
    """A PEFT LoRA adapter folder on top of a CKPT (without adapters) -> a CKPT with adapters; `module_keys`:
    module key -> canonical functions of the models adapters are saved against (the formats')."""
    conf = read_json(os.path.join(src, ADAPTER_CONFIG))
    if conf is None:
        raise FileNotFoundError(f"{src}/{ADAPTER_CONFIG} not found")
    _check_config(conf)
    if os.path.abspath(base) == os.path.abspath(out):
        raise engine.ConversionError("--out must differ from --base")
    ckpt = engine.read_ckpt(base)
    if has_adapters(ckpt.cfg):
        raise engine.ConversionError(f"{base} already has LoRA adapters; export --lora merge it first")
    tensors = dict(TensorReader(src).iter_tensors())
    pairs = _canonical_lora(list(tensors), module_keys)
    names = sorted({c.split(".")[-2] for c in pairs})
    cfg = dataclasses.replace(ckpt.cfg, lora=LoRAConfig(rank=int(conf["r"]), alpha=float(conf["lora_alpha"]),
                                                       dropout=float(conf.get("lora_dropout", 0.0)),
                                                       target_modules=names))
    shapes = VLM(cfg).abstract_params()
    params = ckpt.params
    entries = adapted(cfg)
    missing = []
    for e in entries:
        a_key, b_key = pairs.get(e.key, (None, None))
        for which, key in (("lora_a", a_key), ("lora_b", b_key)):
            path = e.path[:-1] + (which,)
            shape = mapping.get_leaf(shapes, path).shape
            try:
                leaf = mapping.get_leaf(params, path)
            except KeyError:
                leaf = np.zeros(shape, np.asarray(mapping.get_leaf(params, e.path)).dtype)
                mapping.set_leaf(params, path, leaf)
            want = shape[1:] if e.layer is not None else shape
            if key is None:
                missing.append(e.key)
                continue
            t = tensors[key].T
            if tuple(t.shape) != tuple(want):
                raise engine.ConversionError(f"shape mismatch for '{key}': got {list(t.T.shape)}, the base model "
                                             f"expects {list(want[::-1])}")
            if e.layer is None:
                leaf[...] = t
            else:
                leaf[e.layer] = t
    if missing:
        engine.log(f"{len(set(missing))} adapted linears have no adapter in {src} (zero delta), "
                   f"e.g. {sorted(set(missing))[0]}")
    os.makedirs(out, exist_ok=True)
    for name in (engine.CONVERSION, f"{engine.EXTRAS}.safetensors"):
        if os.path.isfile(os.path.join(base, name)):
            shutil.copy2(os.path.join(base, name), os.path.join(out, name))
    with open(os.path.join(out, "lora_source.json"), "w", encoding="utf-8") as f:
        json.dump({"adapter": os.path.abspath(src), "base": os.path.abspath(base), "adapter_config": conf}, f, indent=2)
    engine.save_model_folder(out, params, cfg, ckpt.tokenizer_dir, {"converted_from": "peft"})
    return cfg
