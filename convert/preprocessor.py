"""Image processor configs: read from a checkpoint folder, turned into our preprocessing, written for export.

transformers 4 saves the image processor as `preprocessor_config.json` (and a LlavaProcessor's own keys as
`processor_config.json`); transformers 5 saves one `processor_config.json` with the image processor nested
under "image_processor". Both are read; export writes the transformers 4 pair, which both versions load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

try:  # transformers 5 without torchvision: the PIL image processors, without a warning
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import SiglipImageProcessorPil as SiglipImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

from convert.engine import ConversionError
from convert.files import read_json
from vlm_jax.config import VisionConfig

IMAGE_PROCESSOR, PROCESSOR = "preprocessor_config.json", "processor_config.json"
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL codes HF processors store


class UnsupportedPreprocessing(ConversionError):
    pass


@dataclass(frozen=True)
class Preprocessing:
    """How images are brought to the tower's input (the modes of vlm_jax.data.images)."""
    aspect: str = "pad"  # pad (LLaVA's expand2square) | crop (CLIP processor) | resize (SigLIP processor)
    resample: str = "bicubic"


def read(folder: Optional[str]) -> Optional[dict]:
    """The image processor config of a checkpoint folder (either file), None if it has none."""
    if not folder:
        return None
    nested = (read_json(os.path.join(folder, PROCESSOR)) or {}).get("image_processor")
    return nested or read_json(os.path.join(folder, IMAGE_PROCESSOR))


def processor_keys(folder: Optional[str]) -> Optional[dict]:
    """A processor_config.json's own keys (patch_size, image_token, ...), without a nested image processor."""
    conf = read_json(os.path.join(folder, PROCESSOR)) if folder else None
    return {k: v for k, v in conf.items() if k != "image_processor"} if conf else None


def _side(value, key: str) -> Optional[int]:
    return value.get(key) if isinstance(value, dict) else value


def from_config(pre: Optional[dict], image_size: Optional[int] = None, name: str = IMAGE_PROCESSOR) -> Preprocessing:
    """An HF image processor config -> our preprocessing (LLaVA's pad without one). With `image_size`,
    a processor whose output is not the tower's image_size square is an error."""
    if not pre:
        return Preprocessing()
    resample = RESAMPLE.get(pre.get("resample", 3))
    if resample is None:
        raise UnsupportedPreprocessing(f"{name}: resample={pre['resample']!r} (supported: 2 bilinear, 3 bicubic)")
    crop = pre.get("do_center_crop", str(pre.get("image_processor_type", "")).startswith(("CLIP", "Llava")))
    if image_size is not None:
        size, crop_size = pre.get("size"), pre.get("crop_size")
        sides = ([_side(crop_size, "height"), _side(crop_size, "width"), _side(size, "shortest_edge")] if crop
                 else [_side(size, "height"), _side(size, "width")])
        if any(s is not None and s != image_size for s in sides):
            raise UnsupportedPreprocessing(f"{name}: size {size} / crop_size {crop_size} do not give the tower's "
                                           f"{image_size}x{image_size} input")
    return Preprocessing(aspect="pad" if pre.get("do_pad") else ("crop" if crop else "resize"), resample=resample)


def image_processor(v: VisionConfig):
    """A fresh transformers image processor for the tower (when the source had none)."""
    s = v.image_size
    if v.kind == "clip":
        return CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                  image_mean=list(v.image_mean), image_std=list(v.image_std))
    return SiglipImageProcessor(size={"height": s, "width": s}, image_mean=list(v.image_mean), image_std=list(v.image_std))
