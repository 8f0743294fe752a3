"""`aligngpt`: AlignGPT checkpoints (`AlignGPTForCausalLM`, github.com/AlignGPT-VL/AlignGPT).

A LlamaForCausalLM whose extra modules sit at the top level, beside `model` and `lm_head`:
  model.* (LLaMA), lm_head.weight, mm_projector.{0,2}.* (LLaVA projector names, projector_keys.py),
  vision_tower.vision_tower.vision_model.* (when the tower was saved; else `--vision DIR`),
  align_indicators.indicator_embs [8, D], gated_weight_layer.mlp.{0,2}.{weight,bias} (Linear(N, 256), Linear(256, 7)).
config.json: the LLaMA config with model_type "aligngpt" and LLaVA's mm_* keys. Image sentinel -200; the
indicator placeholder our data inserts after BOS is `aligngpt.indicator_token_id`.
"""

from __future__ import annotations

from typing import Optional

from convert import engine, projector_keys
from convert.formats.base import Folder, register
from convert.formats.llava import Llava
from vlm_jax.config import AlignGPTConfig, ModelConfig, VisionConfig

VISION = "vision_tower.vision_tower."
ALIGN = ("align_indicators.", "gated_weight_layer.")


def key_functions(vision_model: bool, projector_type: str):
    vis = VISION + ("vision_model." if vision_model else "")

    def to_canonical(key: str) -> Optional[str]:
        if key.startswith(ALIGN):
            return "aligngpt." + key
        if key.startswith("mm_projector."):
            return projector_keys.to_canonical(key[len("mm_projector."):], projector_type)
        if key.startswith(vis):
            return "vision." + key[len(vis):]
        if key == "lm_head.weight":
            return key
        return "lm." + key[len("model."):] if key.startswith("model.") else None

    def from_canonical(name: str) -> Optional[str]:
        if name.startswith("raw."):
            return name[4:]
        if name.startswith("aligngpt."):
            return name[len("aligngpt."):]
        if name.startswith("projector."):
            rest = projector_keys.from_canonical(name, projector_type)
            return "mm_projector." + rest if rest else None
        if name.startswith("vision."):
            return vis + name[len("vision."):]
        if name == "lm_head.weight":
            return name
        return "model." + name[len("lm."):] if name.startswith("lm.") else None

    return to_canonical, from_canonical


@register("aligngpt")
class AlignGPT(Llava):
    family = ()
    export_options = ("vision_tower",)
    vision_prefix = VISION
    what = "an AlignGPT checkpoint folder"

    def recognizes(self, config: dict, folder: str) -> bool:
        return config.get("model_type") == "aligngpt"

    def key_functions(self, vision_model: bool, projector_type: str):
        return key_functions(vision_model, projector_type)

    def model_config(self, config: dict, vision: VisionConfig, shapes: dict) -> ModelConfig:
        cfg = super().model_config(config, vision, shapes)
        ind = shapes.get("aligngpt.align_indicators.indicator_embs")
        gate = shapes.get("aligngpt.gated_weight_layer.mlp.0.weight")
        if ind is None or gate is None:
            raise engine.ConversionError("not an AlignGPT checkpoint: align_indicators.indicator_embs / "
                                         "gated_weight_layer.mlp.0.weight are missing")
        cfg.aligngpt = AlignGPTConfig(enabled=True, num_indicators=int(ind[0]), gate_hidden=int(gate[0]))
        return cfg

    def fresh_config(self, ckpt: engine.Ckpt) -> dict:
        config = super().fresh_config(ckpt)
        config.update(architectures=["AlignGPTForCausalLM"], model_type="aligngpt")
        return config

    def folders(self, ckpt: engine.Ckpt, own: bool, vision_tower: str = "auto") -> list[Folder]:
        if not ckpt.cfg.aligngpt.enabled:
            raise engine.ConversionError(f"{ckpt.path} is not an AlignGPT model (model.aligngpt.enabled is false)")
        return super().folders(ckpt, own, vision_tower=vision_tower)
