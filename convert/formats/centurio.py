"""`centurio`: checkpoints of Centurio's training code (github.com/gregor-ge/Centurio,
src/modules/modeling/llava.py `LlavaForConditionalGeneration`, llava_projectors.py).

Keys (the module names of that class):
  vision_tower.*                  a timm VisionTransformer (`timm.create_model(config.timm_model, num_classes=0)`):
                                  patch_embed.proj.*, pos_embed [1, N, D], blocks.N.{norm1, attn.qkv (q, k, v fused
                                  along the output axis), attn.proj, norm2, mlp.fc1, mlp.fc2}.*, norm.*, attn_pool.*
  multi_modal_projector.adapter.* linear_1.*, linear_2.* (`adapter_type` multiscale-pool or mlp)
  language_model.model.*, language_model.lm_head.weight (absent when tied)
config.json: a LlavaConfig (model_type "llava") with `timm_model`, `adapter_type`, `adapter_multi_scale`
(tiles per side, their default 2), `vision_feature_select_strategy` ("full"), `image_token_index`,
`text_config`; its CLIP-typed `vision_config` is not what the tower is (the tower is the timm model's).
The tower's forward is `get_intermediate_layers(n={len(blocks) - 2})`: the output of the second-to-last
block without the final norm, i.e. our select_layer -2, whatever `vision_feature_layer` says (ignored
there as here). Images: resized to a square, bicubic, mean/std 0.5 (src/tasks/vllm/data.py, timm's config).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
from transformers import LlavaConfig

from convert import engine, hf_configs, mapping, preprocessor
from convert.files import read_json
from convert.formats import hf_llava
from convert.formats.base import CheckpointFormat, Folder, Reading, register
from convert.preprocessor import Preprocessing
from vlm_jax.config import ModelConfig, ProjectorConfig, VisionConfig
from vlm_jax.models.vit import num_layers_used


@dataclass(frozen=True)
class TimmTower:
    image_size: int
    patch_size: int
    hidden_size: int
    depth: int
    heads: int
    mlp: int  # int(embed_dim * mlp_ratio)


# timm 1.0.31 timm/models/vision_transformer.py model_args; all class_token=False, global_pool='map',
# nn.GELU (exact), LayerNorm eps 1e-6, qkv_bias
TIMM_TOWERS = {
    "vit_so400m_patch14_siglip_384": TimmTower(384, 14, 1152, 27, 16, 4304),
    "vit_so400m_patch14_siglip_378": TimmTower(378, 14, 1152, 27, 16, 4304),
    "vit_so400m_patch14_siglip_224": TimmTower(224, 14, 1152, 27, 16, 4304),
    "vit_so400m_patch16_siglip_256": TimmTower(256, 16, 1152, 27, 16, 4304),
    "vit_large_patch16_siglip_384": TimmTower(384, 16, 1024, 24, 16, 4096),
    "vit_large_patch16_siglip_256": TimmTower(256, 16, 1024, 24, 16, 4096),
    "vit_base_patch16_siglip_384": TimmTower(384, 16, 768, 12, 12, 3072),
    "vit_base_patch16_siglip_224": TimmTower(224, 16, 768, 12, 12, 3072),
}
ADAPTERS = {"multiscale-pool": "multiscale-pool", "mlp": "mlp2x_gelu"}  # adapter_type -> our projector
VISION, PROJECTOR = "vision_tower.", "multi_modal_projector.adapter."
BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj", "mlp.fc1": "mlp.fc1",
         "mlp.fc2": "mlp.fc2"}
TOP = {"patch_embed.proj": "embeddings.patch_embedding", "norm": "post_layernorm"}
QKV = ("q_proj", "k_proj", "v_proj")
POSITIONS = "vision.embeddings.position_embedding.weight"


def vision_to_canonical(rest: str):
    if rest == "pos_embed":
        return mapping.Squeezed(POSITIONS)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest)
    if m:
        i, module, p = m.groups()
        if module == "attn.qkv":
            return mapping.Fused(tuple(f"vision.encoder.layers.{i}.self_attn.{n}.{p}" for n in QKV))
        return f"vision.encoder.layers.{i}.{BLOCK[module]}.{p}" if module in BLOCK else None
    module, _, p = rest.rpartition(".")
    return f"vision.{TOP[module]}.{p}" if module in TOP else None


def vision_from_canonical(name: str):
    if name == POSITIONS:
        return mapping.Unsqueezed(VISION + "pos_embed")
    m = re.fullmatch(r"vision\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        i, module, p = m.groups()
        if module.startswith("self_attn.") and module[len("self_attn."):] in QKV:
            return mapping.Part(f"{VISION}blocks.{i}.attn.qkv.{p}", QKV.index(module[len("self_attn."):]), len(QKV))
        inverse = {v: k for k, v in BLOCK.items()}
        return f"{VISION}blocks.{i}.{inverse[module]}.{p}" if module in inverse else None
    module, _, p = name[len("vision."):].rpartition(".")
    inverse = {v: k for k, v in TOP.items()}
    return f"{VISION}{inverse[module]}.{p}" if module in inverse else None


def key_functions():
    lm_to, lm_from = hf_llava.key_functions("hf4", False)

    def to_canonical(key: str):
        if key.startswith(VISION):
            return vision_to_canonical(key[len(VISION):])
        if key.startswith("multi_modal_projector."):
            return "projector." + key[len(PROJECTOR):] if key.startswith(PROJECTOR) else None
        return lm_to(key)

    def from_canonical(name: str):
        if name.startswith("vision."):
            return vision_from_canonical(name)
        if name.startswith("projector."):
            return PROJECTOR + name[len("projector."):]
        return lm_from(name)

    return to_canonical, from_canonical


def timm_tower(name: str) -> TimmTower:
    base = name.split(".")[0]  # e.g. vit_so400m_patch14_siglip_384.webli
    if base not in TIMM_TOWERS:
        raise hf_configs.UnsupportedConfig(f"timm_model {name!r} is not a known timm SigLIP tower (known: "
                                           f"{', '.join(TIMM_TOWERS)})")
    return TIMM_TOWERS[base]


def model_config(config: dict, pre: Optional[dict]) -> ModelConfig:
    if "timm_model" not in config:
        raise hf_configs.UnsupportedConfig("config.json has no timm_model (Centurio's training code names its tower so)")
    adapter = config.get("adapter_type", "mlp")
    if adapter not in ADAPTERS:
        raise hf_configs.UnsupportedConfig(f"adapter_type {adapter!r} is not supported (supported: {', '.join(ADAPTERS)})")
    if config.get("vision_feature_select_strategy", "default") != "full":
        raise hf_configs.UnsupportedConfig(
            f"vision_feature_select_strategy={config.get('vision_feature_select_strategy', 'default')!r} drops the "
            "first patch of a tower without a class token; only 'full' (what Centurio's training code sets) is supported")
    t = timm_tower(config["timm_model"])
    mean, std = hf_configs.SIGLIP_MEAN, hf_configs.SIGLIP_STD
    if pre:
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    vision = VisionConfig(kind="siglip", image_size=t.image_size, patch_size=t.patch_size, hidden_size=t.hidden_size,
                          intermediate_size=t.mlp, num_layers=t.depth, num_heads=t.heads, layer_norm_eps=1e-6,
                          hidden_act="gelu", select_layer=-2, select_feature="patch", image_mean=mean, image_std=std)
    projector = ProjectorConfig(type=ADAPTERS[adapter], multi_scale=int(config.get("adapter_multi_scale", 2)))
    return ModelConfig(vision=vision, projector=projector, image_token_id=int(config["image_token_index"]),
                       decoder=hf_configs.decoder_from_hf(hf_configs.text_config_from_dict(config["text_config"])))


def timm_name(v: VisionConfig) -> str:
    for name, t in TIMM_TOWERS.items():
        if (t.image_size, t.patch_size, t.hidden_size, t.depth, t.heads, t.mlp) == (
                v.image_size, v.patch_size, v.hidden_size, v.num_layers, v.num_heads, v.intermediate_size):
            return name
    raise hf_configs.UnsupportedConfig("the vision tower is none of the timm SigLIP towers Centurio's code builds "
                                       f"({', '.join(TIMM_TOWERS)})")


def centurio_config(cfg: ModelConfig) -> dict:
    """config.json as Centurio's LlavaModule writes it (LlavaConfig + timm_model, adapter_type, adapter_*)."""
    adapter = {v: k for k, v in ADAPTERS.items()}[cfg.projector.type]
    c = LlavaConfig(text_config=hf_configs.decoder_to_hf(cfg.decoder), image_token_index=cfg.image_token_id,
                    vision_feature_select_strategy="full", tie_word_embeddings=cfg.decoder.tie_embeddings,
                    architectures=["LlavaForConditionalGeneration"]).to_dict()
    c["vision_config"]["hidden_size"] = cfg.vision.hidden_size  # as their model sets it from the timm tower
    c.update(timm_model=timm_name(cfg.vision), adapter_type=adapter)
    if adapter == "multiscale-pool":
        c["adapter_multi_scale"] = cfg.projector.multi_scale
    return c


def timm_fillers(cfg: ModelConfig) -> dict:
    """Tensors of the timm tower the model never uses (blocks after the selected one, final norm, attention
    pool), as zeros / identity, so that a model from elsewhere loads into Centurio's class strictly."""
    v = cfg.vision
    d, m = v.hidden_size, v.intermediate_size
    out = {"vision.post_layernorm.weight": np.ones((d,), np.float32),
           "vision.post_layernorm.bias": np.zeros((d,), np.float32)}
    for i in range(num_layers_used(v), v.num_layers):
        p = f"vision.encoder.layers.{i}."
        for n, shape in (("layer_norm1", (d,)), ("layer_norm2", (d,))):
            out[p + n + ".weight"], out[p + n + ".bias"] = np.ones(shape, np.float32), np.zeros(shape, np.float32)
        for n, (o, i_) in {**{f"self_attn.{q}": (d, d) for q in (*QKV, "out_proj")}, "mlp.fc1": (m, d),
                           "mlp.fc2": (d, m)}.items():
            out[p + n + ".weight"], out[p + n + ".bias"] = np.zeros((o, i_), np.float32), np.zeros((o,), np.float32)
    pool = {"latent": (1, 1, d), "q.weight": (d, d), "q.bias": (d,), "kv.weight": (2 * d, d), "kv.bias": (2 * d,),
            "proj.weight": (d, d), "proj.bias": (d,), "norm.bias": (d,), "mlp.fc1.weight": (m, d),
            "mlp.fc1.bias": (m,), "mlp.fc2.weight": (d, m), "mlp.fc2.bias": (d,)}
    out.update({f"raw.{VISION}attn_pool.{k}": np.zeros(s, np.float32) for k, s in pool.items()})
    out[f"raw.{VISION}attn_pool.norm.weight"] = np.ones((d,), np.float32)
    return out


@register("centurio")
class Centurio(CheckpointFormat):

    def recognizes(self, config: dict, folder: str) -> bool:
        return "timm_model" in config

    def read(self, src: str) -> Reading:
        config = read_json(os.path.join(src, "config.json"))
        if config is None:
            raise FileNotFoundError(f"{src}/config.json not found (a Centurio checkpoint folder is needed)")
        pre = preprocessor.read(src)
        meta = {"config": config, "preprocessor": pre,
                "generation_config": read_json(os.path.join(src, "generation_config.json"))}
        return Reading(model_config(config, pre), [engine.Source(src, key_functions()[0], True, "source")], meta, src)

    def source_model(self, source: dict, cfg: ModelConfig) -> ModelConfig:
        return model_config(source["config"], source.get("preprocessor"))

    def folders(self, ckpt: engine.Ckpt, own: bool) -> list[Folder]:
        cfg, source = ckpt.cfg, ckpt.source
        v = cfg.vision
        if cfg.projector.type not in ADAPTERS.values():
            raise hf_configs.UnsupportedConfig(f"Centurio's adapters are {', '.join(ADAPTERS)}, this model has "
                                               f"'{cfg.projector.type}'")
        if (v.kind, v.hidden_act, v.select_layer, v.select_feature) != ("siglip", "gelu", -2, "patch"):
            raise hf_configs.UnsupportedConfig(
                "Centurio's tower is a timm SigLIP (exact GELU) read at its second-to-last block; this model's is "
                f"{v.kind} / {v.hidden_act} / select_layer {v.select_layer} / {v.select_feature}")
        config = source["config"] if self.reuses_source_config(ckpt, own) else centurio_config(cfg)
        return [Folder(key_functions()[1], config, keep_extra=lambda n: own or not n.startswith("raw."),
                       fillers=timm_fillers(cfg), tokenizer=True,
                       side_files={"preprocessor_config.json": source.get("preprocessor") if own else None,
                                   "generation_config.json": source.get("generation_config") if own else None})]

    def peft_key(self, cfg: ModelConfig, layout: Optional[str] = None):
        return key_functions()[1]

    def preprocessing(self, meta: dict) -> Preprocessing:
        return Preprocessing(aspect="resize")
