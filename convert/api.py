"""The converter's public API (what infer/, bench/ and the CLI use).

    import_checkpoint("hf-llava", "llava-1.5-7b-hf", "ckpt/llava15")
    export_checkpoint("hf-llava", "ckpt/llava15", "out/llava15-hf", max_shard_bytes=2 * 10**9)
    params, cfg, preprocessing = load_in_memory("llava-1.5-7b-hf")     # nothing written

Formats are the registered classes of convert/formats/ (`formats()` lists their names).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from convert import assemble as assemble_lib
from convert import engine
from convert import formats as registry
from convert.files import parse_size, read_json  # noqa: F401  (public: "5GB" -> bytes)
from convert.preprocessor import Preprocessing
from convert.tensor_io import DTYPES
from convert.tensor_io import ShardedSafetensorsWriter  # noqa: F401  (public: streamed HF-style shards)
from vlm_jax.config import ModelConfig
from vlm_jax.output_folder import occupied, replacing

ConversionError = engine.ConversionError
UsageError = engine.UsageError


def formats() -> tuple[str, ...]:
    return registry.names()


def _format(name: str):
    try:
        return registry.get(name)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None


@contextlib.contextmanager
def _output(out: str, overwrite: bool) -> Iterator[str]:
    """A new sibling folder that takes `out`'s place when the block succeeds (`out` as it was if it fails);
    a non-empty `out` only with overwrite."""
    why = occupied(out)
    if why and not overwrite:
        raise UsageError(f"--out {out} {why}; pass --overwrite to replace it")
    with replacing(out) as tmp:
        yield tmp


def _check_dtype(dtype: Optional[str]) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")


def _check_options(fmt, given: dict, allowed: tuple[str, ...]) -> None:
    bad = sorted(k for k in given if k not in allowed)
    if bad:
        raise UsageError(f"--format {fmt.name} takes no {', '.join('--' + k.replace('_', '-') for k in bad)}")


def import_checkpoint(fmt: str, src: str, out: str, *, dtype: str = "float32", progress: bool = True,
                      overwrite: bool = False, **options) -> ModelConfig:
    """Checkpoint `src` in format `fmt` -> CKPT folder `out` (written beside it, then swapped in; a
    non-empty `out` only with overwrite). Options: the format's `import_options` (vision: an HF tower
    folder for llava/palo/aligngpt; base: the CKPT a peft adapter applies to)."""
    f = _format(fmt)
    _check_options(f, options, f.import_options)
    _check_dtype(dtype)
    if not os.path.exists(src):
        raise UsageError(f"--src {src} does not exist")
    if options.get("base") and os.path.abspath(options["base"]) == os.path.abspath(out):
        raise UsageError("--out must differ from --base")
    with _output(out, overwrite) as tmp:
        return f.import_checkpoint(src, tmp, dtype=dtype, progress=progress, **options)


def export_checkpoint(fmt: str, src: str, out: str, *, lora: str = "merge", dtype: Optional[str] = None,
                      max_shard_bytes: int = 5 * 2**30, progress: bool = True, base_model: Optional[str] = None,
                      overwrite: bool = False, **options) -> None:
    """CKPT folder `src` -> `out` in format `fmt`. lora: merge | base | peft (a PEFT adapter folder for the
    format's model; base_model names its base). Options: the format's `export_options` (layout,
    weights, vision_tower, projector_only). `out` is written whole beside it and swapped in, so it holds
    exactly one set of weight files; a non-empty `out` only with overwrite."""
    f = _format(fmt)
    if not f.exports:
        raise UsageError(f"--format {fmt} is import only")
    _check_dtype(dtype)
    if not os.path.isdir(src):
        raise UsageError(f"--src {src} is not a CKPT folder")
    if lora == "peft":
        _check_options(f, options, ("layout",) if "layout" in f.export_options else ())
        with _output(out, overwrite) as tmp:
            f.export_peft(src, tmp, base_model=base_model, dtype=dtype, **options)
        return
    if base_model:
        raise UsageError("--base-model is only for --lora peft")
    _check_options(f, options, f.export_options)
    with _output(out, overwrite) as tmp:
        f.export_checkpoint(src, tmp, lora_policy=lora, dtype=dtype, max_shard_bytes=max_shard_bytes,
                            progress=progress, **options)


def assemble(vision: str, llm: str, out: str, *, overwrite: bool = False, **options) -> ModelConfig:
    """A stage-1 CKPT from an HF vision folder and an HF causal LM folder (see convert/assemble.py)."""
    _check_dtype(options.get("dtype"))
    for flag, path in (("--vision", vision), ("--llm", llm)):
        if not os.path.isdir(path):
            raise UsageError(f"{flag} {path} is not a folder")
    with _output(out, overwrite) as tmp:
        return assemble_lib.assemble(vision, llm, tmp, **options)


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
