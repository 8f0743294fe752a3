"""`hf-llava`: transformers `LlavaForConditionalGeneration` checkpoints.

Key layouts (detected on import, reproduced on export):
  hf5: model.vision_tower.[vision_model.]*, model.language_model.*, model.multi_modal_projector.*, lm_head.weight
  hf4: vision_tower.[vision_model.]*, language_model.model.*, language_model.lm_head.weight, multi_modal_projector.*
(transformers 5 itself saves the hf4 names; both load with `from_pretrained`.)
"""

from __future__ import annotations

import os
from typing import Optional

from transformers import LlavaConfig

from convert import engine, hf_configs, mapping, preprocessor
from convert.files import read_json
from convert.formats.base import CheckpointFormat, Folder, Reading, register
from convert.tensor_io import TensorReader
from vlm_jax.config import ModelConfig, ProjectorConfig

LAYOUTS = {
    "hf5": {"vision": "model.vision_tower.", "lm": "model.language_model.",
            "projector": "model.multi_modal_projector.", "lm_head": "lm_head.weight"},
    "hf4": {"vision": "vision_tower.", "lm": "language_model.model.",
            "projector": "multi_modal_projector.", "lm_head": "language_model.lm_head.weight"},
}


def key_functions(layout: str, vision_model: bool):
    p = LAYOUTS[layout]
    vis = p["vision"] + ("vision_model." if vision_model else "")
    pairs = [(vis, "vision."), (p["lm"], "lm."), (p["projector"], "projector.")]

    def to_canonical(key: str) -> Optional[str]:
        if key == p["lm_head"]:
            return "lm_head.weight"
        for ours, canon in pairs:
            if key.startswith(ours):
                return canon + key[len(ours):]
        return None

    def from_canonical(name: str) -> Optional[str]:
        if name.startswith("raw."):
            return name[4:]
        if name == "lm_head.weight":
            return p["lm_head"]
        for ours, canon in pairs:
            if name.startswith(canon):
                return ours + name[len(canon):]
        return None

    return to_canonical, from_canonical


def detect_layout(keys: list[str]) -> tuple[str, bool]:
    layout = "hf5" if any(k.startswith(("model.language_model.", "model.vision_tower.")) for k in keys) else "hf4"
    vision_model = any(k.startswith(LAYOUTS[layout]["vision"] + "vision_model.") for k in keys)
    return layout, vision_model


def model_config(config: LlavaConfig, pre: Optional[dict]) -> ModelConfig:
    """LlavaConfig (+ the image processor config) -> ModelConfig."""
    vc, tc = config.vision_config, config.text_config
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise hf_configs.UnsupportedConfig(f"vision_feature_layer={layer!r}: only a single layer is supported")
    strategy = config.vision_feature_select_strategy
    if strategy == "default" and vc.model_type != "clip_vision_model":
        raise hf_configs.UnsupportedConfig(
            f"vision_feature_select_strategy='default' drops the first token, which for {vc.model_type} is a patch; "
            "only 'full' is supported for towers without a class token")
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise hf_configs.UnsupportedConfig(
            f"projector_hidden_act={config.projector_hidden_act!r} / multimodal_projector_bias=False: only the "
            "LLaVA projector (Linear, GELU, Linear with biases = mlp2x_gelu) is supported")
    vision = hf_configs.vision_from_hf(vc, layer, "patch" if strategy == "default" else "cls_patch", pre)
    return ModelConfig(vision=vision, projector=ProjectorConfig(type="mlp2x_gelu"),
                       decoder=hf_configs.decoder_from_hf(tc), image_token_id=config.image_token_id)


def hf_config(cfg: ModelConfig, extra_names: list[str]) -> LlavaConfig:
    """A LlavaConfig consistent with the tensors that exist (our layers + kept-aside ones)."""
    if cfg.projector.type != "mlp2x_gelu":
        raise hf_configs.UnsupportedConfig(f"HF Llava has only the mlp2x_gelu projector, this model has '{cfg.projector.type}'")
    if not 0 <= cfg.image_token_id < cfg.decoder.vocab_size:
        raise hf_configs.UnsupportedConfig(
            f"image_token_id={cfg.image_token_id} is not a vocabulary id; HF Llava needs an <image> token in the "
            "vocabulary (export --format llava for the sentinel layout)")
    vision, feature_layer = hf_configs.tower_to_hf(cfg.vision, extra_names)
    cls_patch = cfg.vision.select_feature == "cls_patch" or cfg.vision.kind == "siglip"
    return LlavaConfig(
        vision_config=vision, text_config=hf_configs.decoder_to_hf(cfg.decoder),
        image_token_index=cfg.image_token_id, projector_hidden_act="gelu",
        vision_feature_select_strategy="full" if cls_patch else "default",
        vision_feature_layer=feature_layer, image_seq_length=cfg.vision.num_feature_tokens,
        tie_word_embeddings=cfg.decoder.tie_embeddings, architectures=["LlavaForConditionalGeneration"],
    )


def processor_keys(cfg: ModelConfig) -> dict:
    """processor_config.json of a LlavaProcessor (as transformers 4 writes it, the image processor apart)."""
    v = cfg.vision
    cls_patch = v.select_feature == "cls_patch" or v.kind == "siglip"
    return {"image_token": "<image>", "num_additional_image_tokens": 1 if v.has_class_token else 0,
            "patch_size": v.patch_size, "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "full" if cls_patch else "default"}


@register("hf-llava")
class HFLlava(CheckpointFormat):
    export_options = ("layout",)

    def recognizes(self, config: dict, folder: str) -> bool:
        others = {"llm_cfg", "timm_model"}  # VILA's, Centurio's LlavaConfig
        return config.get("model_type") == "llava" and "text_config" in config and not others & set(config)

    def read(self, src: str) -> Reading:
        pre = preprocessor.read(src)
        config = hf_configs.load_config(src)
        if config.model_type != "llava":
            raise hf_configs.UnsupportedConfig(f"{src}: model_type '{config.model_type}' is not 'llava'")
        cfg = model_config(config, pre)
        layout, vision_model = detect_layout([i.key for i in TensorReader(src).infos()])
        to_canonical, _ = key_functions(layout, vision_model)
        meta = {"layout": layout, "vision_model": vision_model, "config": read_json(os.path.join(src, "config.json")),
                "preprocessor": pre, "processor": preprocessor.processor_keys(src),
                "generation_config": read_json(os.path.join(src, "generation_config.json"))}
        return Reading(cfg, [engine.Source(src, to_canonical, True, "source")], meta, src)

    def source_model(self, source: dict, cfg: ModelConfig) -> ModelConfig:
        return model_config(LlavaConfig.from_dict(source["config"]), source.get("preprocessor"))

    def folders(self, ckpt: engine.Ckpt, own: bool, layout: Optional[str] = None) -> list[Folder]:
        source = ckpt.source
        layout = layout or (source.get("layout") if own else None) or "hf5"
        _, from_canonical = key_functions(layout, bool(source.get("vision_model")) if own else False)
        config = source["config"] if self.reuses_source_config(ckpt, own) else hf_config(ckpt.cfg, ckpt.extra_names())

        def keep(name: str) -> bool:
            if name.startswith("raw."):
                return own
            return own or name != "vision.embeddings.position_ids"  # an old CLIP buffer HF no longer has

        pre = source.get("preprocessor") if own else None
        processor = (source.get("processor") if own else None) or processor_keys(ckpt.cfg)
        return [Folder(from_canonical, config, keep_extra=keep, fillers=mapping.vision_fillers(ckpt.cfg),
                       tokenizer=True, side_files={preprocessor.IMAGE_PROCESSOR: pre, preprocessor.PROCESSOR: processor,
                                                   "generation_config.json": source.get("generation_config")},
                       image_processor=None if pre else preprocessor.image_processor(ckpt.cfg.vision))]

    def peft_key(self, cfg: ModelConfig, layout: Optional[str] = None):
        return key_functions(layout or "hf5", False)[1]

    def peft_module_keys(self):
        return [key_functions("hf5", False)[0], key_functions("hf4", False)[0]]

    def preprocessing(self, meta: dict):
        return preprocessor.from_config(meta.get("preprocessor"))
