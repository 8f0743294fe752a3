"""HF `LlavaForConditionalGeneration` checkpoints <-> CKPT folders.

Key layouts (detected on import, reproduced on export):
  hf5: model.vision_tower.[vision_model.]*, model.language_model.*, model.multi_modal_projector.*, lm_head.weight
  hf4: vision_tower.[vision_model.]*, language_model.model.*, language_model.lm_head.weight, multi_modal_projector.*
(transformers 5 itself saves the hf4 names; both load with `from_pretrained`.)
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from transformers import LlavaConfig

try:  # transformers 5 without torchvision: the PIL image processors, without a warning
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import SiglipImageProcessorPil as SiglipImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

from convert import engine, hf_configs
from convert.files import copy_tokenizer, read_json, write_json
from vlm_jax.config import ModelConfig, ProjectorConfig
from vlm_jax.models.vit import num_layers_used

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


def model_config(config: LlavaConfig, preprocessor: Optional[dict]) -> ModelConfig:
    """LlavaConfig (+ preprocessor_config.json) -> ModelConfig."""
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
    vision = hf_configs.vision_from_hf(vc, layer, "patch" if strategy == "default" else "cls_patch", preprocessor)
    return ModelConfig(vision=vision, projector=ProjectorConfig(type="mlp2x_gelu"),
                       decoder=hf_configs.decoder_from_hf(tc), image_token_id=config.image_token_id)


def import_checkpoint(src: str, out: str, *, dtype: str = "float32", progress: bool = True) -> ModelConfig:
    from convert.tensor_io import TensorReader

    config = hf_configs.load_config(src)
    if config.model_type != "llava":
        raise hf_configs.UnsupportedConfig(f"{src}: model_type '{config.model_type}' is not 'llava'")
    preprocessor = read_json(os.path.join(src, "preprocessor_config.json"))
    cfg = model_config(config, preprocessor)
    layout, vision_model = detect_layout([i.key for i in TensorReader(src).infos()])
    to_canonical, _ = key_functions(layout, vision_model)
    os.makedirs(out, exist_ok=True)
    result = engine.import_weights([engine.Source(src, to_canonical, True, "source")], cfg, out,
                                   dtype=dtype, progress=progress)
    source = {"format": "hf-llava", "layout": layout, "vision_model": vision_model,
              "config": read_json(os.path.join(src, "config.json")), "preprocessor": preprocessor,
              "generation_config": read_json(os.path.join(src, "generation_config.json"))}
    engine.write_imported(out, result, cfg, source, src)
    return cfg


def _same_model(a: ModelConfig, b: ModelConfig) -> bool:
    return (a.vision, a.projector, a.decoder, a.image_token_id) == (b.vision, b.projector, b.decoder, b.image_token_id)


def _vision_layers_held(cfg: ModelConfig, extra_names: list[str]) -> int:
    """Vision layers of the exported tower: ours plus consecutive later layers kept aside at import."""
    n = num_layers_used(cfg.vision)
    while any(x.startswith(f"vision.encoder.layers.{n}.") for x in extra_names):
        n += 1
    return n


def hf_config(cfg: ModelConfig, extra_names: list[str]) -> LlavaConfig:
    """A LlavaConfig consistent with the tensors that exist (our layers + kept-aside ones)."""
    if cfg.projector.type != "mlp2x_gelu":
        raise hf_configs.UnsupportedConfig(f"HF Llava has only the mlp2x_gelu projector, this model has '{cfg.projector.type}'")
    if not 0 <= cfg.image_token_id < cfg.decoder.vocab_size:
        raise hf_configs.UnsupportedConfig(
            f"image_token_id={cfg.image_token_id} is not a vocabulary id; HF Llava needs an <image> token in the "
            "vocabulary (export --format llava for the sentinel layout)")
    n_used, n_total = num_layers_used(cfg.vision), _vision_layers_held(cfg, extra_names)
    use_head = any(x.startswith("vision.head.") for x in extra_names)
    cls_patch = cfg.vision.select_feature == "cls_patch" or cfg.vision.kind == "siglip"
    tc = hf_configs.decoder_to_hf(cfg.decoder)
    return LlavaConfig(
        vision_config=hf_configs.vision_to_hf(cfg.vision, n_total, use_head), text_config=tc,
        image_token_index=cfg.image_token_id, projector_hidden_act="gelu",
        vision_feature_select_strategy="full" if cls_patch else "default",
        vision_feature_layer=n_used - n_total - 1, image_seq_length=cfg.vision.num_feature_tokens,
        tie_word_embeddings=cfg.decoder.tie_embeddings, architectures=["LlavaForConditionalGeneration"],
    )


def preprocessor_config(cfg: ModelConfig):
    v, s = cfg.vision, cfg.vision.image_size
    if v.kind == "clip":
        return CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                  image_mean=list(v.image_mean), image_std=list(v.image_std))
    return SiglipImageProcessor(size={"height": s, "width": s}, image_mean=list(v.image_mean), image_std=list(v.image_std))


def vision_fillers(cfg: ModelConfig) -> dict:
    """Tensors HF vision towers hold but LLaVA never uses (final LayerNorm): identity values, so that
    a model trained from scratch loads without 'missing weights'."""
    d = cfg.vision.hidden_size
    return {"vision.post_layernorm.weight": np.ones((d,), np.float32),
            "vision.post_layernorm.bias": np.zeros((d,), np.float32)}


def export_checkpoint(ckpt_dir: str, out: str, *, layout: Optional[str] = None, dtype: Optional[str] = None,
                      max_shard_bytes: int = 5 * 2**30, progress: bool = True, lora_policy: str = "merge") -> None:
    from convert import lora

    ckpt = lora.apply_policy(engine.read_ckpt(ckpt_dir), lora_policy)
    cfg, source = ckpt.cfg, ckpt.source
    from_hf = source.get("format") == "hf-llava"
    layout = layout or (source.get("layout") if from_hf else None) or "hf5"
    vision_model = bool(source.get("vision_model")) if from_hf else False
    _, from_canonical = key_functions(layout, vision_model)
    extra_names = ckpt.extra_names()
    os.makedirs(out, exist_ok=True)

    src_config = source.get("config") if from_hf else None
    if src_config and _same_model(model_config(LlavaConfig.from_dict(src_config), source.get("preprocessor")), cfg):
        write_json(os.path.join(out, "config.json"), src_config)
    else:
        hf_config(cfg, extra_names).save_pretrained(out)

    def keep(name: str) -> bool:
        if name.startswith("raw."):
            return from_hf
        return from_hf or name != "vision.embeddings.position_ids"  # an old CLIP buffer HF no longer has

    engine.export_weights(ckpt, out, from_canonical, keep_extra=keep, fillers=vision_fillers(cfg), dtype=dtype,
                          max_shard_bytes=max_shard_bytes, progress=progress)
    if ckpt.tokenizer_dir:
        copy_tokenizer(ckpt.tokenizer_dir, out)
    if source.get("preprocessor"):
        write_json(os.path.join(out, "preprocessor_config.json"), source["preprocessor"])
    else:
        preprocessor_config(cfg).save_pretrained(out)
    if source.get("generation_config"):
        write_json(os.path.join(out, "generation_config.json"), source["generation_config"])
