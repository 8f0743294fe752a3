"""Original LLaVA checkpoints (`LlavaLlamaForCausalLM`) <-> CKPT folders.

Keys: model.embed_tokens / model.layers.* / model.norm / lm_head (the LLaMA), model.mm_projector.{0,2,..}.*
(`linear`: model.mm_projector.{weight,bias}), and, when the tower was saved with the model,
model.vision_tower.vision_tower.vision_model.*; otherwise the tower comes from `--vision DIR` (an HF
CLIP/SigLIP folder, as `mm_vision_tower` names). The image placeholder is the sentinel -200, outside
the vocabulary. Stage-1 `mm_projector.bin` files hold only the projector keys.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

from transformers import LlamaConfig, Qwen2Config

from convert import engine, hf_configs, projector_keys
from convert.files import copy_tokenizer, read_json, write_json
from convert.tensor_io import BinShardWriter, ShardedSafetensorsWriter, TensorReader
from vlm_jax.config import ModelConfig, ProjectorConfig, VisionConfig

IMAGE_SENTINEL = -200
VISION = "model.vision_tower.vision_tower."
PROJECTOR = "mm_projector."
DEFAULT_TOWERS = {"clip": "openai/clip-vit-large-patch14-336", "siglip": "google/siglip-so400m-patch14-384"}
VISION_ROOTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.", "head.")


def projector_to_canonical(rest: str) -> Optional[str]:
    """'0.weight' -> 'projector.linear_1.weight', '2.bias' -> linear_2, 'weight' (linear) -> linear_1."""
    m = re.fullmatch(r"(?:(\d+)\.)?(weight|bias)", rest)
    if not m:
        return None
    idx = int(m.group(1) or 0)
    return f"projector.linear_{idx // 2 + 1}.{m.group(2)}" if idx % 2 == 0 else None


def projector_from_canonical(name: str, projector_type: str) -> Optional[str]:
    m = re.fullmatch(r"projector\.linear_(\d+)\.(weight|bias)", name)
    if not m:
        return None
    if projector_type == "linear":
        return m.group(2)
    return f"{2 * (int(m.group(1)) - 1)}.{m.group(2)}"


def vision_folder_key(key: str) -> Optional[str]:
    """Key of an HF CLIP/SigLIP (vision) model folder -> canonical."""
    if key.startswith("vision_model."):
        return "vision." + key[len("vision_model."):]
    return "vision." + key if key.startswith(VISION_ROOTS) else None


def key_functions(vision_model: bool, projector_type: str):
    vis = VISION + ("vision_model." if vision_model else "")

    def to_canonical(key: str) -> Optional[str]:
        if key == "lm_head.weight":
            return key
        if key.startswith(vis):
            return "vision." + key[len(vis):]
        if PROJECTOR in key:
            return projector_keys.to_canonical(key.split(PROJECTOR, 1)[1], projector_type)
        if key.startswith("model.") and not key.startswith("model.vision_tower."):
            return "lm." + key[len("model."):]
        return None

    def from_canonical(name: str) -> Optional[str]:
        if name.startswith("raw."):
            return name[4:]
        if name == "lm_head.weight":
            return name
        if name.startswith("vision."):
            return vis + name[len("vision."):]
        if name.startswith("projector."):
            rest = projector_keys.from_canonical(name, projector_type)
            return "model.mm_projector." + rest if rest else None
        if name.startswith("lm."):
            return "model." + name[len("lm."):]
        return None

    return to_canonical, from_canonical


def text_config(config: dict):
    d = {k: v for k, v in config.items() if k != "model_type"}
    cls = Qwen2Config if "qwen" in str(config.get("model_type", "")).lower() else LlamaConfig
    return cls.from_dict(d)


def infer_vision(infos: dict, mm: dict) -> VisionConfig:
    """Vision config from the tower's tensor shapes (when no --vision folder gives it)."""
    siglip = "vision.embeddings.patch_embedding.bias" in infos
    d, _, p, _ = infos["vision.embeddings.patch_embedding.weight"]
    n_pos = infos["vision.embeddings.position_embedding.weight"][0]
    layers = 1 + max(int(k.split(".")[3]) for k in infos if k.startswith("vision.encoder.layers."))
    heads = 16 if (siglip and d == 1152) else max(1, d // 64)  # not in the shapes; CLIP/SigLIP use head_dim 64 (so400m: 72)
    engine.log(f"vision config inferred from tensor shapes: hidden {d}, {layers} layers, {heads} heads "
               "(pass --vision DIR to take it from the tower's config.json)")
    return VisionConfig(kind="siglip" if siglip else "clip", image_size=int(math.isqrt(n_pos - (0 if siglip else 1))) * p,
                        patch_size=p, hidden_size=d, intermediate_size=infos["vision.encoder.layers.0.mlp.fc1.weight"][0],
                        num_layers=layers, num_heads=heads, layer_norm_eps=1e-6 if siglip else 1e-5,
                        hidden_act="gelu_pytorch_tanh" if siglip else "quick_gelu")


def model_config(config: dict, vision: VisionConfig) -> ModelConfig:
    vision.select_layer = int(config.get("mm_vision_select_layer", -2))
    vision.select_feature = config.get("mm_vision_select_feature", "patch")
    if vision.kind == "siglip":
        vision.select_feature = "patch"
    return ModelConfig(vision=vision, projector=ProjectorConfig(type=config.get("mm_projector_type", "linear")),
                       decoder=hf_configs.decoder_from_hf(text_config(config)), image_token_id=IMAGE_SENTINEL)


def _vision_from_folder(folder: str) -> VisionConfig:
    vc = hf_configs.vision_part(hf_configs.load_config(folder))
    return hf_configs.vision_from_hf(vc, -2, "patch", read_json(os.path.join(folder, "preprocessor_config.json")))


def import_checkpoint(src: str, out: str, *, vision: Optional[str] = None, dtype: str = "float32",
                      progress: bool = True) -> ModelConfig:
    config = read_json(os.path.join(src, "config.json")) if os.path.isdir(src) else None
    if config is None:
        raise FileNotFoundError(f"{src}/config.json not found (an original LLaVA checkpoint folder is needed)")
    keys = [i for i in TensorReader(src).infos()]
    vision_model = any(i.key.startswith(VISION + "vision_model.") for i in keys)
    to_canonical, _ = key_functions(vision_model, config.get("mm_projector_type", "linear"))
    shapes = {to_canonical(i.key): i.shape for i in keys}
    in_ckpt = "vision.embeddings.patch_embedding.weight" in shapes
    if vision:
        vcfg = _vision_from_folder(vision)
    elif in_ckpt:
        vcfg = infer_vision(shapes, config)
    else:
        raise engine.ConversionError(f"{src} holds no vision tower; pass --vision DIR (the HF CLIP/SigLIP folder of "
                                     f"mm_vision_tower={config.get('mm_vision_tower')!r})")
    cfg = model_config(config, vcfg)
    sources = [engine.Source(src, to_canonical, True, "source")]
    if vision and not in_ckpt:
        sources.append(engine.Source(vision, vision_folder_key, False, "vision"))
    os.makedirs(out, exist_ok=True)
    result = engine.import_weights(sources, cfg, out, dtype=dtype, progress=progress)
    source = {"format": "llava", "config": config, "vision_model": vision_model, "vision_in_checkpoint": in_ckpt,
              "weights": "bin" if TensorReader(src).files[0].endswith(".bin") else "safetensors",
              "preprocessor": read_json(os.path.join(vision or src, "preprocessor_config.json")),
              "generation_config": read_json(os.path.join(src, "generation_config.json"))}
    engine.write_imported(out, result, cfg, source, src)
    return cfg


def _same_model(a: ModelConfig, b: ModelConfig) -> bool:
    return (a.vision, a.projector, a.decoder) == (b.vision, b.projector, b.decoder)


def llava_config(cfg: ModelConfig, source: dict) -> dict:
    """config.json of LlavaLlamaForCausalLM: the text config plus LLaVA's mm_* keys."""
    v = cfg.vision
    src = source.get("config") or {}
    qwen = cfg.decoder.qkv_bias
    out = hf_configs.decoder_to_hf(cfg.decoder).to_dict()
    out.update({
        "architectures": ["LlavaQwen2ForCausalLM" if qwen else "LlavaLlamaForCausalLM"],
        "model_type": "llava_qwen2" if qwen else "llava_llama",
        "mm_vision_tower": src.get("mm_vision_tower") or DEFAULT_TOWERS[v.kind],
        "mm_hidden_size": v.hidden_size, "mm_vision_select_layer": v.select_layer,
        "mm_vision_select_feature": v.select_feature, "mm_projector_type": cfg.projector.type,
        "use_mm_proj": True, "mm_use_im_start_end": src.get("mm_use_im_start_end", False),
        "mm_use_im_patch_token": src.get("mm_use_im_patch_token", False),
        "image_aspect_ratio": src.get("image_aspect_ratio", "pad"),
        "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
    })
    return out


def export_checkpoint(ckpt_dir: str, out: str, *, dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30,
                      weights: str = "safetensors", vision_tower: str = "auto", projector_only: bool = False,
                      progress: bool = True, lora_policy: str = "merge") -> None:
    from convert import lora

    ckpt = lora.apply_policy(engine.read_ckpt(ckpt_dir), lora_policy)
    cfg, source = ckpt.cfg, ckpt.source
    from_llava = source.get("format") == "llava"
    vision_model = bool(source.get("vision_model", True)) if from_llava else True
    _, from_canonical = key_functions(vision_model, cfg.projector.type)
    os.makedirs(out, exist_ok=True)
    if projector_only:
        engine.export_weights(ckpt, out, from_canonical, select=lambda n: n.startswith("projector."), dtype=dtype,
                              max_shard_bytes=2**62, prefix="mm_projector", progress=progress, writer_cls=BinShardWriter)
        return
    include = {"include": True, "omit": False}.get(vision_tower, source.get("vision_in_checkpoint", True) if from_llava else True)

    def select(name: str) -> bool:
        return include or not name.startswith("vision.")

    def keep(name: str) -> bool:
        return from_llava or not name.startswith("raw.")

    src_config = source.get("config") if from_llava else None
    if src_config and _same_model(model_config(src_config, VisionConfig(**vars(cfg.vision))), cfg):
        write_json(os.path.join(out, "config.json"), src_config)
    else:
        write_json(os.path.join(out, "config.json"), llava_config(cfg, source))
    bin_ = weights == "bin"
    engine.export_weights(ckpt, out, from_canonical, select=select, keep_extra=keep, dtype=dtype,
                          max_shard_bytes=max_shard_bytes, prefix="pytorch_model" if bin_ else "model",
                          writer_cls=BinShardWriter if bin_ else ShardedSafetensorsWriter, progress=progress)
    if ckpt.tokenizer_dir:
        copy_tokenizer(ckpt.tokenizer_dir, out)
    if source.get("generation_config"):
        write_json(os.path.join(out, "generation_config.json"), source["generation_config"])
