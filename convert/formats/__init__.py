"""Checkpoint formats: one module per `--format` name (hf-llava -> hf_llava.py), each registering one
CheckpointFormat subclass (base.py). `names()` lists them without importing them, so that the CLI's
usage errors and --help stay fast; `get(name)` imports the module and returns its format."""

from __future__ import annotations

import importlib
import os
import pkgutil

_NOT_FORMATS = ("base",)


def names() -> tuple[str, ...]:
    here = os.path.dirname(__file__)
    return tuple(sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([here]) if m.name not in _NOT_FORMATS))


def get(name: str):
    """The format registered under `name` (a CheckpointFormat instance)."""
    if name not in names():
        raise KeyError(f"unknown checkpoint format '{name}' (known: {', '.join(names())})")
    importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    registry = importlib.import_module(f"{__name__}.base").REGISTRY
    if name not in registry:
        raise KeyError(f"module {__name__}.{name.replace('-', '_')} registers no format '{name}'")
    return registry[name]()


def all_formats() -> list:
    return [get(n) for n in names()]
