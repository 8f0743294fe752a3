"""AlignGPT checkpoints (`AlignGPTForCausalLM`, github.com/AlignGPT-VL/AlignGPT) <-> CKPT folders.

A LlamaForCausalLM whose extra modules sit at the top level, beside `model` and `lm_head`:
  model.* (LLaMA), lm_head.weight, mm_projector.{0,2}.* (LLaVA projector names, projector_keys.py),
  vision_tower.vision_tower.vision_model.* (when the tower was saved; else `--vision DIR`),
  align_indicators.indicator_embs [8, D], gated_weight_layer.mlp.{0,2}.{weight,bias} (Linear(N, 256), Linear(256, 7)).
config.json: the LLaMA config with model_type "aligngpt" and LLaVA's mm_* keys. Image sentinel -200; the
indicator placeholder our data inserts after BOS is `aligngpt.indicator_token_id`.
"""

from __future__ import annotations

import os
from typing import Optional

from convert import engine, llava_original, projector_keys
from convert.files import copy_tokenizer, read_json, write_json
from convert.tensor_io import TensorReader
from vlm_jax.config import AlignGPTConfig, ModelConfig

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


def model_config(config: dict, vision, shapes: dict) -> ModelConfig:
    cfg = llava_original.model_config(config, vision)
    ind = shapes.get("aligngpt.align_indicators.indicator_embs")
    gate = shapes.get("aligngpt.gated_weight_layer.mlp.0.weight")
    if ind is None or gate is None:
        raise engine.ConversionError("not an AlignGPT checkpoint: align_indicators.indicator_embs / "
                                     "gated_weight_layer.mlp.0.weight are missing")
    cfg.aligngpt = AlignGPTConfig(enabled=True, num_indicators=int(ind[0]), gate_hidden=int(gate[0]))
    return cfg


def import_checkpoint(src: str, out: str, *, vision: Optional[str] = None, dtype: str = "float32",
                      progress: bool = True) -> ModelConfig:
    config = read_json(os.path.join(src, "config.json"))
    if config is None:
        raise FileNotFoundError(f"{src}/config.json not found (an AlignGPT checkpoint folder is needed)")
    infos = TensorReader(src).infos()
    vision_model = any(i.key.startswith(VISION + "vision_model.") for i in infos)
    ptype = config.get("mm_projector_type", "linear")
    to_canonical, _ = key_functions(vision_model, ptype)
    shapes = {to_canonical(i.key): i.shape for i in infos}
    in_ckpt = "vision.embeddings.patch_embedding.weight" in shapes
    if vision:
        vcfg = llava_original._vision_from_folder(vision)
    elif in_ckpt:
        vcfg = llava_original.infer_vision(shapes, config)
    else:
        raise engine.ConversionError(f"{src} holds no vision tower; pass --vision DIR (the HF CLIP folder of "
                                     f"mm_vision_tower={config.get('mm_vision_tower')!r})")
    cfg = model_config(config, vcfg, shapes)
    sources = [engine.Source(src, to_canonical, True, "source")]
    if vision and not in_ckpt:
        sources.append(engine.Source(vision, llava_original.vision_folder_key, False, "vision"))
    os.makedirs(out, exist_ok=True)
    result = engine.import_weights(sources, cfg, out, dtype=dtype, progress=progress)
    source = {"format": "aligngpt", "config": config, "vision_model": vision_model, "vision_in_checkpoint": in_ckpt,
              "preprocessor": read_json(os.path.join(vision or src, "preprocessor_config.json")),
              "generation_config": read_json(os.path.join(src, "generation_config.json"))}
    engine.write_imported(out, result, cfg, source, src)
    return cfg


def export_checkpoint(ckpt_dir: str, out: str, *, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30,
                      vision_tower: str = "auto", progress: bool = True, lora_policy: str = "merge") -> None:
    from convert import lora

    ckpt = lora.apply_policy(engine.read_ckpt(ckpt_dir), lora_policy)
    cfg, source = ckpt.cfg, ckpt.source
    if not cfg.aligngpt.enabled:
        raise engine.ConversionError(f"{ckpt_dir} is not an AlignGPT model (model.aligngpt.enabled is false)")
    mine = source.get("format") == "aligngpt"
    _, from_canonical = key_functions(bool(source.get("vision_model", True)) if mine else True, cfg.projector.type)
    include = {"include": True, "omit": False}.get(vision_tower, source.get("vision_in_checkpoint", True) if mine else True)
    os.makedirs(out, exist_ok=True)
    src_cfg = source.get("config") if mine else None
    if src_cfg and llava_original._same_model(llava_original.model_config(src_cfg, type(cfg.vision)(**vars(cfg.vision))), cfg):
        config = src_cfg
    else:
        config = llava_original.llava_config(cfg, source)
        config.update(architectures=["AlignGPTForCausalLM"], model_type="aligngpt")
    write_json(os.path.join(out, "config.json"), config)
    engine.export_weights(ckpt, out, from_canonical, select=lambda n: include or not n.startswith("vision."),
                          keep_extra=lambda n: mine or not n.startswith("raw."), dtype=dtype,
                          max_shard_bytes=max_shard_bytes, progress=progress)
    if ckpt.tokenizer_dir:
        copy_tokenizer(ckpt.tokenizer_dir, out)
    if source.get("generation_config"):
        write_json(os.path.join(out, "generation_config.json"), source["generation_config"])
