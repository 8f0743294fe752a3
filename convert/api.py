"""The converter's public API (what infer/, bench/ and the CLI use).

    import_checkpoint("hf-llava", "llava-1.5-7b-hf", "ckpt/llava15")
    export_checkpoint("hf-llava", "ckpt/llava15", "out/llava15-hf", max_shard_bytes=2 * 10**9)
    params, cfg, preprocessing = load_in_memory("llava-1.5-7b-hf")     # nothing written

Formats are the registered classes of convert/formats/ (`formats()` lists their names).
"""

from __future__ import annotations

import os
from typing import Optional

from convert import assemble as assemble_lib
from convert import engine
from convert import formats as registry
from convert.files import parse_size, read_json  # noqa: F401  (public: "5GB" -> bytes)
from convert.preprocessor import Preprocessing
from convert.tensor_io import ShardedSafetensorsWriter  # noqa: F401  (public: streamed HF-style shards)
from vlm_jax.config import ModelConfig

ConversionError = engine.ConversionError
UsageError = engine.UsageError


def formats() -> tuple[str, ...]:
    return registry.names()


def _format(name: str):
    try:
        return registry.get(name)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None


def _check_options(fmt, given: dict, allowed: tuple[str, ...]) -> None:
    bad = sorted(k for k in given if k not in allowed)
    if bad:
        raise UsageError(f"--format {fmt.name} takes no {', '.join('--' + k.replace('_', '-') for k in bad)}")


def import_checkpoint(fmt: str, src: str, out: str, *, dtype: str = "float32", progress: bool = True,
                      **options) -> ModelConfig:
    """Checkpoint `src` in format `fmt` -> CKPT folder `out`. Options: the format's `import_options`
    (vision: an HF tower folder for llava/palo/aligngpt; base: the CKPT a peft adapter applies to)."""
    f = _format(fmt)
    _check_options(f, options, f.import_options)
    return f.import_checkpoint(src, out, dtype=dtype, progress=progress, **options)


def export_checkpoint(fmt: str, src: str, out: str, *, lora: str = "merge", dtype: Optional[str] = None,
                      max_shard_bytes: int = 5 * 2**30, progress: bool = True, base_model: Optional[str] = None,
                      **options) -> None:
    """CKPT folder `src` -> `out` in format `fmt`. lora: merge | base | peft (a PEFT adapter folder for the
    format's model; base_model names its base). Options: the format's `export_options` (layout,
    weights, vision_tower, projector_only)."""
    f = _format(fmt)
    if not f.exports:
        raise UsageError(f"--format {fmt} is import only")
    if lora == "peft":
        _check_options(f, options, ("layout",) if "layout" in f.export_options else ())
        f.export_peft(src, out, base_model=base_model, dtype=dtype, **options)
        return
    if base_model:
        raise UsageError("--base-model is only for --lora peft")
    _check_options(f, options, f.export_options)
    f.export_checkpoint(src, out, lora_policy=lora, dtype=dtype, max_shard_bytes=max_shard_bytes, progress=progress,
                        **options)


def assemble(vision: str, llm: str, out: str, **options) -> ModelConfig:
    """A stage-1 CKPT from an HF vision folder and an HF causal LM folder (see convert/assemble.py)."""
    return assemble_lib.assemble(vision, llm, out, **options)


def detect_format(src: str) -> str:
    """The format of checkpoint folder `src`, from its config.json."""
    config = read_json(os.path.join(src, "config.json"))
    if config is None:
        raise FileNotFoundError(f"{src}: no config.json (a checkpoint folder is needed)")
    found = [f.name for f in registry.all_formats() if f.recognizes(config, src)]
    if len(found) != 1:
        what = "no known format" if not found else f"several formats ({', '.join(found)})"
        raise ConversionError(f"{src}/config.json (model_type {config.get('model_type')!r}) matches {what}; "
                              "convert it with `python -m convert import --format ...`")
    return found[0]


def load_in_memory(src: str, fmt: Optional[str] = None, **options) -> tuple[dict, ModelConfig, Preprocessing]:
    """A checkpoint folder (format detected unless given) -> (numpy params, model config, image preprocessing),
    nothing written. Options as import_checkpoint's (e.g. vision=DIR for an original LLaVA without its tower)."""
    f = _format(fmt or detect_format(src))
    _check_options(f, {k: v for k, v in options.items() if v is not None}, f.import_options)
    return f.in_memory(src, **{k: v for k, v in options.items() if v is not None})


def preprocessing(ckpt_dir: str) -> Preprocessing:
    """The image preprocessing of a CKPT folder: its source format's (conversion.json), LLaVA's pad otherwise."""
    source = (read_json(os.path.join(ckpt_dir, engine.CONVERSION)) or {}).get("source", {})
    name = source.get("format")
    if name not in registry.names():
        return Preprocessing()
    return registry.get(name).preprocessing(source)
