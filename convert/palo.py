"""PALO / MobilePALO checkpoints <-> CKPT folders.

PALO-7B/13B are original-LLaVA checkpoints (mlp2x_gelu); MobilePALO-1.7B is MobileVLM's layout: the
same `LlavaLlamaForCausalLM`-style keys with a MobileLLaMA decoder (a LLaMA) and the `ldpnet` projector
under `model.mm_projector.mlp.{1,3}` / `model.mm_projector.mb_block.{1,2}.block.*` (projector_keys.py),
`mm_projector_type: ldpnet`. Both go through llava_original; this module only names the MobileVLM model
class in configs written from scratch.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from convert import engine, llava_original
from vlm_jax.config import ModelConfig


def import_checkpoint(src: str, out: str, *, vision: Optional[str] = None, dtype: str = "float32",
                      progress: bool = True) -> ModelConfig:
    return llava_original.import_checkpoint(src, out, vision=vision, dtype=dtype, progress=progress)


def export_checkpoint(ckpt_dir: str, out: str, **kw) -> None:
    llava_original.export_checkpoint(ckpt_dir, out, **kw)
    if kw.get("projector_only"):
        return
    ckpt_source = _source(ckpt_dir)
    path = os.path.join(out, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("mm_projector_type") == "ldpnet" and config != ckpt_source.get("config"):
        config.update(architectures=["MobileLlamaForCausalLM"], model_type="mobilevlm")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")


def _source(ckpt_dir: str) -> dict:
    p = os.path.join(ckpt_dir, engine.CONVERSION)
    if not os.path.isfile(p):
        return {}
    with open(p, encoding="utf-8") as f:
        return json.load(f).get("source", {})
