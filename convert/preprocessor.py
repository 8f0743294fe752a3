"""Image processor configs: read from a checkpoint folder, turned into our preprocessing, written for export."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

try:  # transformers 5 without torchvision: the PIL image processors, without a warning
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import SiglipImageProcessorPil as SiglipImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

from convert.files import read_json
from vlm_jax.config import VisionConfig


@dataclass(frozen=True)
class Preprocessing:
    """How images are brought to the tower's input (the modes of vlm_jax.data.images)."""
    aspect: str = "pad"  # pad (LLaVA's expand2square) | crop (CLIP processor) | resize (SigLIP processor)
    resample: str = "bicubic"


def read(folder: Optional[str]) -> Optional[dict]:
    """The image processor config of a checkpoint folder (preprocessor_config.json), None if it has none."""
    return read_json(os.path.join(folder, "preprocessor_config.json")) if folder else None


def from_config(pre: Optional[dict]) -> Preprocessing:
    """An HF image processor config -> our preprocessing (LLaVA's pad without one)."""
    if not pre:
        return Preprocessing()
    return Preprocessing(aspect="crop" if pre.get("do_center_crop") else "resize")


def image_processor(v: VisionConfig):
    """A fresh transformers image processor for the tower (when the source had none)."""
    s = v.image_size
    if v.kind == "clip":
        return CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                  image_mean=list(v.image_mean), image_std=list(v.image_std))
    return SiglipImageProcessor(size={"height": s, "width": s}, image_mean=list(v.image_mean), image_std=list(v.image_std))
