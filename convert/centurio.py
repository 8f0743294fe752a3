"""Centurio checkpoints <-> CKPT folders (SigLIP tower, `multiscale-pool` adapter, Qwen2 decoder).

Layout: HF-Llava-style names with the adapter one level down, as Centurio's model holds it:
  vision_tower.vision_model.*, multi_modal_projector.adapter.linear_{1,2}.*, language_model.model.*,
  language_model.lm_head.weight (absent when tied)      (hf4 names; hf5 names model.* are read too)
config.json: model_type "centurio" with vision_config (SigLIP), text_config (Qwen2), image_token_index,
vision_feature_layer, adapter_type "multiscale-pool", multi_scale (tiles per side).
"""

from __future__ import annotations

import os
from typing import Optional

from convert import engine, hf_configs, hf_llava
from convert.files import copy_tokenizer, read_json, write_json
from convert.tensor_io import TensorReader
from vlm_jax.config import ModelConfig, ProjectorConfig
from vlm_jax.models.vit import num_layers_used

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


def _text_config(d: dict):
    from transformers import LlamaConfig, Qwen2Config

    cls = Qwen2Config if d.get("model_type") == "qwen2" else LlamaConfig
    return cls.from_dict({k: v for k, v in d.items() if k != "model_type"})


def model_config(config: dict, preprocessor: Optional[dict]) -> ModelConfig:
    from convert.vila import vision_config_class

    if config.get("adapter_type", "multiscale-pool") != "multiscale-pool":
        raise hf_configs.UnsupportedConfig(f"adapter_type {config.get('adapter_type')!r}: only multiscale-pool")
    vc = vision_config_class(config["vision_config"])
    vision = hf_configs.vision_from_hf(vc, int(config.get("vision_feature_layer", -2)), "patch", preprocessor)
    return ModelConfig(vision=vision, projector=ProjectorConfig(type="multiscale-pool",
                                                                multi_scale=int(config.get("multi_scale", 2))),
                       decoder=hf_configs.decoder_from_hf(_text_config(config["text_config"])),
                       image_token_id=int(config["image_token_index"]))


def import_checkpoint(src: str, out: str, *, dtype: str = "float32", progress: bool = True) -> ModelConfig:
    config = read_json(os.path.join(src, "config.json"))
    if config is None:
        raise FileNotFoundError(f"{src}/config.json not found (a Centurio checkpoint folder is needed)")
    preprocessor = read_json(os.path.join(src, "preprocessor_config.json"))
    cfg = model_config(config, preprocessor)
    layout, vision_model = hf_llava.detect_layout([i.key for i in TensorReader(src).infos()])
    to_canonical, _ = key_functions(layout, vision_model)
    os.makedirs(out, exist_ok=True)
    result = engine.import_weights([engine.Source(src, to_canonical, True, "source")], cfg, out, dtype=dtype,
                                   progress=progress)
    source = {"format": "centurio", "layout": layout, "vision_model": vision_model, "config": config, "preprocessor": preprocessor,
              "generation_config": read_json(os.path.join(src, "generation_config.json"))}
    engine.write_imported(out, result, cfg, source, src)
    return cfg


def centurio_config(cfg: ModelConfig, extra_names: list[str]) -> dict:
    n_used, n_total = num_layers_used(cfg.vision), hf_llava._vision_layers_held(cfg, extra_names)
    use_head = any(x.startswith("vision.head.") for x in extra_names)
    return {"architectures": ["CenturioForConditionalGeneration"], "model_type": "centurio",
            "vision_config": hf_configs.vision_to_hf(cfg.vision, n_total, use_head).to_dict(),
            "text_config": hf_configs.decoder_to_hf(cfg.decoder).to_dict(), "image_token_index": cfg.image_token_id,
            "vision_feature_layer": n_used - n_total - 1, "adapter_type": "multiscale-pool",
            "multi_scale": cfg.projector.multi_scale, "tie_word_embeddings": cfg.decoder.tie_embeddings}


def export_checkpoint(ckpt_dir: str, out: str, *, layout: Optional[str] = None, dtype: Optional[str] = None,
                      max_shard_bytes: int = 5 * 2**30, progress: bool = True, lora_policy: str = "merge") -> None:
    from convert import lora

    ckpt = lora.apply_policy(engine.read_ckpt(ckpt_dir), lora_policy)
    cfg, source = ckpt.cfg, ckpt.source
    if cfg.projector.type != "multiscale-pool":
        raise hf_configs.UnsupportedConfig(f"the Centurio layout has the multiscale-pool adapter, this model has "
                                           f"'{cfg.projector.type}'")
    mine = source.get("format") == "centurio"
    _, from_canonical = key_functions(layout or (source.get("layout") if mine else None) or "hf4",
                                      bool(source.get("vision_model", True)) if mine else True)
    os.makedirs(out, exist_ok=True)
    src_cfg = source.get("config") if mine else None
    same = src_cfg and (lambda a: (a.vision, a.projector, a.decoder, a.image_token_id))(
        model_config(src_cfg, source.get("preprocessor"))) == (cfg.vision, cfg.projector, cfg.decoder, cfg.image_token_id)
    write_json(os.path.join(out, "config.json"), src_cfg if same else centurio_config(cfg, ckpt.extra_names()))
    engine.export_weights(ckpt, out, from_canonical, keep_extra=lambda n: mine or not n.startswith("raw."),
                          fillers=hf_llava.vision_fillers(cfg), dtype=dtype, max_shard_bytes=max_shard_bytes,
                          progress=progress)
    if ckpt.tokenizer_dir:
        copy_tokenizer(ckpt.tokenizer_dir, out)
    if source.get("preprocessor"):
        write_json(os.path.join(out, "preprocessor_config.json"), source["preprocessor"])
    else:
        hf_llava.preprocessor_config(cfg).save_pretrained(out)
    if source.get("generation_config"):
        write_json(os.path.join(out, "generation_config.json"), source["generation_config"])
