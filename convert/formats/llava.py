"""`llava`: original LLaVA checkpoints (`LlavaLlamaForCausalLM`).

Keys: model.embed_tokens / model.layers.* / model.norm / lm_head (the LLaMA), model.mm_projector.{0,2,..}.*
(`linear`: model.mm_projector.{weight,bias}), and, when the tower was saved with the model,
model.vision_tower.vision_tower.vision_model.*; otherwise the tower comes from `--vision DIR` (an HF
CLIP/SigLIP folder, as `mm_vision_tower` names). The image placeholder is the sentinel -200, outside
the vocabulary. Stage-1 `mm_projector.bin` files hold only the projector keys.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from convert import engine, folder_keys, hf_configs, preprocessor, projector_keys
from convert.files import read_json
from convert.formats.base import CheckpointFormat, Folder, Reading, register
from convert.preprocessor import Preprocessing
from convert.tensor_io import TensorReader
from vlm_jax.config import ModelConfig, ProjectorConfig, VisionConfig
from vlm_jax.tokenizer import IMAGE_MARKER

VISION = "model.vision_tower.vision_tower."
PROJECTOR = "mm_projector."
DEFAULT_TOWERS = {"clip": "openai/clip-vit-large-patch14-336", "siglip": "google/siglip-so400m-patch14-384"}


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


def infer_vision(infos: dict) -> VisionConfig:
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
                       decoder=hf_configs.decoder_from_hf(hf_configs.text_config_from_dict(config)),
                       image_token_id=IMAGE_MARKER)


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


@register("llava")
class Llava(CheckpointFormat):
    """Also the base of the formats that save LLaVA's LlavaLlamaForCausalLM with other module names."""
    family = ("palo",)
    import_options = ("vision",)
    export_options = ("weights", "vision_tower", "projector_only")
    vision_prefix = VISION
    what = "an original LLaVA checkpoint folder"

    def recognizes(self, config: dict, folder: str) -> bool:
        model_type = str(config.get("model_type", ""))
        return model_type.startswith("llava_") or (model_type == "llava" and "mm_vision_tower" in config
                                                   and "text_config" not in config and "llm_cfg" not in config)

    def key_functions(self, vision_model: bool, projector_type: str):
        return key_functions(vision_model, projector_type)

    def model_config(self, config: dict, vision: VisionConfig, shapes: dict) -> ModelConfig:
        return model_config(config, vision)

    def read(self, src: str, vision: Optional[str] = None) -> Reading:
        config = read_json(os.path.join(src, "config.json")) if os.path.isdir(src) else None
        if config is None:
            raise FileNotFoundError(f"{src}/config.json not found ({self.what} is needed)")
        infos = TensorReader(src).infos()
        vision_model = any(i.key.startswith(self.vision_prefix + "vision_model.") for i in infos)
        to_canonical, _ = self.key_functions(vision_model, config.get("mm_projector_type", "linear"))
        shapes = {to_canonical(i.key): i.shape for i in infos}
        in_ckpt = "vision.embeddings.patch_embedding.weight" in shapes
        if vision:
            vcfg = hf_configs.vision_from_folder(vision)
        elif in_ckpt:
            vcfg = infer_vision(shapes)
        else:
            raise engine.ConversionError(f"{src} holds no vision tower; pass --vision DIR (the HF CLIP/SigLIP folder "
                                         f"of mm_vision_tower={config.get('mm_vision_tower')!r})")
        cfg = self.model_config(config, vcfg, shapes)
        sources = [engine.Source(src, to_canonical, True, "source")]
        if vision and not in_ckpt:
            sources.append(engine.Source(vision, folder_keys.vision_key, False, "vision"))
        meta = {"config": config, "vision_model": vision_model, "vision_in_checkpoint": in_ckpt,
                "weights": "bin" if TensorReader(src).files[0].endswith(".bin") else "safetensors",
                "preprocessor": preprocessor.read(vision or src),
                "generation_config": read_json(os.path.join(src, "generation_config.json"))}
        return Reading(cfg, sources, meta, src)

    def source_model(self, source: dict, cfg: ModelConfig) -> ModelConfig:
        return model_config(source["config"], VisionConfig(**vars(cfg.vision)))

    def fresh_config(self, ckpt: engine.Ckpt) -> dict:
        return llava_config(ckpt.cfg, ckpt.source)

    def folders(self, ckpt: engine.Ckpt, own: bool, weights: str = "safetensors", vision_tower: str = "auto",
                projector_only: bool = False) -> list[Folder]:
        source = ckpt.source
        vision_model = bool(source.get("vision_model", True)) if own else True
        _, from_canonical = self.key_functions(vision_model, ckpt.cfg.projector.type)
        if projector_only:
            return [Folder(from_canonical, select=lambda n: n.startswith("projector."), weights="bin",
                           prefix="mm_projector", single_file=True)]
        include = {"include": True, "omit": False}.get(vision_tower, source.get("vision_in_checkpoint", True) if own
                                                       else True)
        config = source["config"] if self.reuses_source_config(ckpt, own) else self.fresh_config(ckpt)
        return [Folder(from_canonical, config, select=lambda n: include or not n.startswith("vision."),
                       keep_extra=lambda n: own or not n.startswith("raw."), weights=weights, tokenizer=True,
                       side_files={"generation_config.json": source.get("generation_config")})]

    def peft_key(self, cfg: ModelConfig, layout: Optional[str] = None):
        return self.key_functions(True, cfg.projector.type)[1]

    def preprocessing(self, meta: dict) -> Preprocessing:
        """LLaVA's image_aspect_ratio: pad = expand2square, then the tower's processor; otherwise the processor."""
        pre = preprocessor.from_config(meta.get("preprocessor") or {"image_processor_type": "CLIPImageProcessor"})
        if (meta.get("config") or {}).get("image_aspect_ratio", "pad") == "pad":
            return Preprocessing("pad", pre.resample)
        return pre

    def peft_module_keys(self):
        return [key_functions(False, "mlp2x_gelu")[0]]
