"""`centurio`: Centurio checkpoints (SigLIP tower, `multiscale-pool` adapter, Qwen2 decoder).

Layout: HF-Llava-style names with the adapter one level down, as Centurio's model holds it:
  vision_tower.vision_model.*, multi_modal_projector.adapter.linear_{1,2}.*, language_model.model.*,
  language_model.lm_head.weight (absent when tied)      (hf4 names; hf5 names model.* are read too)
config.json: model_type "centurio" with vision_config (SigLIP), text_config (Qwen2), image_token_index,
vision_feature_layer, adapter_type "multiscale-pool", multi_scale (tiles per side).
"""

from __future__ import annotations

import os
from typing import Optional

from convert import engine, hf_configs
from convert.files import read_json
from convert.formats import hf_llava
from convert.formats.base import register
from convert.preprocessor import Preprocessing
from vlm_jax.config import ModelConfig, ProjectorConfig

ADAPTER = "adapter."


def key_functions(layout: str, vision_model: bool = True):
    """hf_llava's names with the projector under `multi_modal_projector.adapter.`."""
    to_hf, from_hf = hf_llava.key_functions(layout, vision_model)
    proj = hf_llava.LAYOUTS[layout]["projector"]

    def to_canonical(key: str) -> Optional[str]:
        if key.startswith(proj):
            rest = key[len(proj):]
            return "projector." + rest[len(ADAPTER):] if rest.startswith(ADAPTER) else None
        return to_hf(key)

    def from_canonical(name: str) -> Optional[str]:
        if name.startswith("projector."):
            return proj + ADAPTER + name[len("projector."):]
        return from_hf(name)

    return to_canonical, from_canonical


def model_config(config: dict, pre: Optional[dict]) -> ModelConfig:
    if config.get("adapter_type", "multiscale-pool") != "multiscale-pool":
        raise hf_configs.UnsupportedConfig(f"adapter_type {config.get('adapter_type')!r}: only multiscale-pool")
    vc = hf_configs.vision_config_from_dict(config["vision_config"])
    vision = hf_configs.vision_from_hf(vc, int(config.get("vision_feature_layer", -2)), "patch", pre)
    return ModelConfig(vision=vision, projector=ProjectorConfig(type="multiscale-pool",
                                                                multi_scale=int(config.get("multi_scale", 2))),
                       decoder=hf_configs.decoder_from_hf(hf_configs.text_config_from_dict(config["text_config"])),
                       image_token_id=int(config["image_token_index"]))


def centurio_config(cfg: ModelConfig, extra_names: list[str]) -> dict:
    vision, feature_layer = hf_configs.tower_to_hf(cfg.vision, extra_names)
    return {"architectures": ["CenturioForConditionalGeneration"], "model_type": "centurio",
            "vision_config": vision.to_dict(), "text_config": hf_configs.decoder_to_hf(cfg.decoder).to_dict(),
            "image_token_index": cfg.image_token_id, "vision_feature_layer": feature_layer,
            "adapter_type": "multiscale-pool", "multi_scale": cfg.projector.multi_scale,
            "tie_word_embeddings": cfg.decoder.tie_embeddings}


@register("centurio")
class Centurio(hf_llava.HFLlava):
    default_layout, default_vision_model = "hf4", True

    def recognizes(self, config: dict, folder: str) -> bool:
        return config.get("model_type") == "centurio"

    def read_config(self, src: str, pre: Optional[dict]) -> tuple[ModelConfig, dict]:
        config = read_json(os.path.join(src, "config.json"))
        if config is None:
            raise FileNotFoundError(f"{src}/config.json not found (a Centurio checkpoint folder is needed)")
        return model_config(config, pre), config

    def key_functions(self, layout: str, vision_model: bool):
        return key_functions(layout, vision_model)

    def source_model(self, source: dict, cfg: ModelConfig) -> ModelConfig:
        return model_config(source["config"], source.get("preprocessor"))

    def fresh_config(self, ckpt: engine.Ckpt):
        return centurio_config(ckpt.cfg, ckpt.extra_names())

    def check_exportable(self, cfg: ModelConfig) -> None:
        if cfg.projector.type != "multiscale-pool":
            raise hf_configs.UnsupportedConfig(f"the Centurio layout has the multiscale-pool adapter, this model has "
                                               f"'{cfg.projector.type}'")

    def peft_module_keys(self):
        return []  # hf4 names: hf-llava's

    def preprocessing(self, meta: dict):
        return Preprocessing()
