"""VILA checkpoints (NVlabs/VILA `LlavaLlamaModel.save_pretrained`) <-> CKPT folders.

  config.json      model_type "llava", architectures ["LlavaLlamaModel"], llm_cfg / vision_tower_cfg /
                   mm_projector_cfg (the sub-configs), mm_vision_select_layer, mm_vision_select_feature, ...
  llm/             an HF causal LM folder (LlamaForCausalLM / Qwen2ForCausalLM) + the tokenizer
  vision_tower/    an HF vision folder (SiglipVisionModel / CLIPVisionModel: vision_model.*) + preprocessor
  mm_projector/    config.json {mm_projector_type, model_type: v2l_projector} + weights `layers.*`
                   (mlp_downsample: layers.{1,2,4}; mlpNx_gelu: layers.{0,2,..}; see projector_keys.py)
The image placeholder is LLaVA's sentinel -200. Source tensors the model does not use are kept per
subfolder (`vila.<subfolder>.<key>`) so that an export reproduces each folder.
"""

from __future__ import annotations

import os
from typing import Optional

from convert import engine, hf_configs, hf_llava, llava_original, projector_keys
from convert.files import copy_tokenizer, read_json, write_json
from convert.tensor_io import TensorReader
from vlm_jax.config import ModelConfig, ProjectorConfig
from vlm_jax.models.vit import num_layers_used

PARTS = ("llm", "vision_tower", "mm_projector")
SIDE_FILES = {"llm": ("generation_config.json",), "vision_tower": ("preprocessor_config.json",), "mm_projector": ()}


def _kept(part: str, key: str) -> str:
    return f"vila.{part}.{key}"


def key_functions(projector_type: str, vision_model: bool = True) -> dict:
    """part -> (to_canonical, from_canonical) of the keys inside that subfolder."""

    def llm_to(key):
        canon = "lm_head.weight" if key == "lm_head.weight" else ("lm." + key[6:] if key.startswith("model.") else None)
        return canon or _kept("llm", key)

    def llm_from(name):
        if name == "lm_head.weight":
            return name
        return "model." + name[3:] if name.startswith("lm.") else _unkept("llm", name)

    def vision_to(key):
        return llava_original.vision_folder_key(key) or _kept("vision_tower", key)

    def vision_from(name):
        if name.startswith("vision."):
            return ("vision_model." if vision_model else "") + name[7:]
        return _unkept("vision_tower", name)

    def proj_to(key):
        canon = projector_keys.to_canonical(key[len("layers."):], projector_type) if key.startswith("layers.") else None
        return canon or _kept("mm_projector", key)

    def proj_from(name):
        if name.startswith("projector."):
            rest = projector_keys.from_canonical(name, projector_type)
            return "layers." + rest if rest else None
        return _unkept("mm_projector", name)

    return {"llm": (llm_to, llm_from), "vision_tower": (vision_to, vision_from), "mm_projector": (proj_to, proj_from)}


def _unkept(part: str, name: str) -> Optional[str]:
    prefix = f"vila.{part}."
    return name[len(prefix):] if name.startswith(prefix) else None


def _part_of(name: str) -> str:
    if name.startswith("vila."):
        return name.split(".")[1]
    return {"lm": "llm", "lm_head": "llm", "vision": "vision_tower", "projector": "mm_projector"}[name.split(".")[0]]


def vision_config_class(d: dict):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    cls = {"siglip_vision_model": SiglipVisionConfig, "clip_vision_model": CLIPVisionConfig}.get(d.get("model_type"))
    if cls is None:
        raise hf_configs.UnsupportedConfig(f"vision_tower model_type {d.get('model_type')!r} is not supported")
    return cls.from_dict({k: v for k, v in d.items() if k != "model_type"})


def model_config(top: dict, llm: dict, vision: dict, projector: dict, preprocessor: Optional[dict]) -> ModelConfig:
    vc = vision_config_class(vision)
    feature = "patch" if top.get("mm_vision_select_feature", "patch") == "patch" else "cls_patch"
    v = hf_configs.vision_from_hf(vc, int(top.get("mm_vision_select_layer", -2)), feature, preprocessor)
    return ModelConfig(vision=v, projector=ProjectorConfig(type=projector.get("mm_projector_type", "mlp_downsample")),
                       decoder=hf_configs.decoder_from_hf(llava_original.text_config(llm)),
                       image_token_id=llava_original.IMAGE_SENTINEL)


def _configs(src: str) -> tuple[dict, dict, dict, dict]:
    top = read_json(os.path.join(src, "config.json"))
    if top is None:
        raise FileNotFoundError(f"{src}/config.json not found (a VILA checkpoint folder is needed)")
    subs = []
    for part in PARTS:
        c = read_json(os.path.join(src, part, "config.json"))
        if c is None:
            raise FileNotFoundError(f"{src}/{part}/config.json not found (VILA folders hold llm/, vision_tower/, mm_projector/)")
        subs.append(c)
    return (top, *subs)


def import_checkpoint(src: str, out: str, *, dtype: str = "float32", progress: bool = True) -> ModelConfig:
    top, llm, vision, projector = _configs(src)
    preprocessor = read_json(os.path.join(src, "vision_tower", "preprocessor_config.json"))
    cfg = model_config(top, llm, vision, projector, preprocessor)
    keys = key_functions(cfg.projector.type)
    vision_model = any(i.key.startswith("vision_model.") for i in TensorReader(os.path.join(src, "vision_tower")).infos())
    sources = [engine.Source(os.path.join(src, p), keys[p][0], True, p) for p in PARTS]
    os.makedirs(out, exist_ok=True)
    result = engine.import_weights(sources, cfg, out, dtype=dtype, progress=progress)
    source = {"format": "vila", "vision_model": vision_model, "config": top, "llm_config": llm, "vision_config": vision, "projector_config": projector,
              "side_files": {p: {n: read_json(os.path.join(src, p, n)) for n in SIDE_FILES[p]} for p in PARTS},
              "weights": {p: os.path.basename(TensorReader(os.path.join(src, p)).files[0]) for p in PARTS}}
    engine.write_imported(out, result, cfg, source, os.path.join(src, "llm"))
    return cfg


def _same_model(a: ModelConfig, b: ModelConfig) -> bool:
    return (a.vision, a.projector, a.decoder) == (b.vision, b.projector, b.decoder)


def _fresh_configs(cfg: ModelConfig, extra_names: list[str]) -> tuple[dict, dict, dict, dict]:
    n_used = num_layers_used(cfg.vision)
    n_total = hf_llava._vision_layers_held(cfg, extra_names)
    use_head = any(x.startswith("vision.head.") for x in extra_names)
    vision = hf_configs.vision_to_hf(cfg.vision, n_total, use_head).to_dict()
    vision["architectures"] = ["SiglipVisionModel" if cfg.vision.kind == "siglip" else "CLIPVisionModel"]
    llm = hf_configs.decoder_to_hf(cfg.decoder).to_dict()
    llm["architectures"] = ["Qwen2ForCausalLM" if cfg.decoder.qkv_bias else "LlamaForCausalLM"]
    projector = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
                 "mm_projector_type": cfg.projector.type}
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava", "llm_cfg": llm, "vision_tower_cfg": vision,
           "mm_projector_cfg": projector, "hidden_size": cfg.decoder.hidden_size,
           "mm_hidden_size": cfg.vision.hidden_size, "mm_vision_select_layer": n_used - n_total - 1,
           "mm_vision_select_feature": "cls_patch" if cfg.vision.select_feature == "cls_patch" else "patch",
           "image_aspect_ratio": "resize", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
           "model_dtype": "torch.bfloat16"}
    return top, llm, vision, projector


def export_checkpoint(ckpt_dir: str, out: str, *, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30,
                      progress: bool = True, lora_policy: str = "merge") -> None:
    from convert import lora

    ckpt = lora.apply_policy(engine.read_ckpt(ckpt_dir), lora_policy)
    cfg, source = ckpt.cfg, ckpt.source
    from_vila = source.get("format") == "vila"
    same = from_vila and _same_model(model_config(
        source["config"], source["llm_config"], source["vision_config"], source["projector_config"],
        source.get("side_files", {}).get("vision_tower", {}).get("preprocessor_config.json")), cfg)
    if same:
        top, llm, vision, projector = (source[k] for k in ("config", "llm_config", "vision_config", "projector_config"))
    else:
        top, llm, vision, projector = _fresh_configs(cfg, ckpt.extra_names())
    keys = key_functions(cfg.projector.type, bool(source.get("vision_model", True)) if from_vila else True)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "config.json"), top)
    for part, conf in zip(PARTS, (llm, vision, projector)):
        d = os.path.join(out, part)
        os.makedirs(d, exist_ok=True)
        write_json(os.path.join(d, "config.json"), conf)
        engine.export_weights(ckpt, d, keys[part][1], select=lambda n, p=part: _part_of(n) == p,
                              keep_extra=lambda n: from_vila or not n.startswith("vila."),
                              fillers=hf_llava.vision_fillers(cfg) if part == "vision_tower" else None,
                              dtype=dtype, max_shard_bytes=max_shard_bytes, progress=progress)
        for name, content in (source.get("side_files", {}).get(part, {}) if from_vila else {}).items():
            if content is not None:
                write_json(os.path.join(d, name), content)
    if not from_vila or not source.get("side_files", {}).get("vision_tower", {}).get("preprocessor_config.json"):
        hf_llava.preprocessor_config(cfg).save_pretrained(os.path.join(out, "vision_tower"))
    if ckpt.tokenizer_dir:
        copy_tokenizer(ckpt.tokenizer_dir, os.path.join(out, "llm"))
