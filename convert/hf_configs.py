"""HF config classes (CLIP/SigLIP vision, LLaMA/Qwen2 text) <-> our VisionConfig / DecoderConfig."""

from __future__ import annotations

import os
from typing import Optional

from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, Qwen2Config, SiglipVisionConfig

from convert import preprocessor as preprocessor_lib
from convert.files import read_json
from vlm_jax.config import DecoderConfig, VisionConfig
from vlm_jax.models.vit import num_layers_used

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
VISION_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
TEXT_TYPES = ("llama", "qwen2", "mistral")


class UnsupportedConfig(ValueError):
    pass


class BadConfig(ValueError):
    """A config file that is not what its folder claims (the CLI exits with 2)."""


def load_config(path: str):
    """A local folder's config.json as its transformers config class (no remote code, no hub)."""
    config = read_json(os.path.join(path, "config.json"))
    if config is None:
        raise FileNotFoundError(f"{path}: no config.json (a local checkpoint folder is needed)")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError) as e:
        raise BadConfig(f"{path}/config.json: model_type {config.get('model_type')!r} is not a transformers model "
                        f"type this converter reads ({type(e).__name__}; no remote code is run)") from None


def vision_part(config):
    """CLIPConfig / SiglipConfig / LlavaConfig -> their vision config; vision configs as is."""
    return getattr(config, "vision_config", None) or config


def vision_config_from_dict(d: dict):
    """A vision tower's config dict (model_type clip_vision_model / siglip_vision_model) as its config class."""
    cls = {"siglip_vision_model": SiglipVisionConfig, "clip_vision_model": CLIPVisionConfig}.get(d.get("model_type"))
    if cls is None:
        raise UnsupportedConfig(f"vision_tower model_type {d.get('model_type')!r} is not supported")
    return cls.from_dict({k: v for k, v in d.items() if k != "model_type"})


def text_config_from_dict(d: dict):
    """A decoder config dict (also the LLaMA part of an original LLaVA config.json) as LlamaConfig / Qwen2Config."""
    cls = Qwen2Config if "qwen" in str(d.get("model_type", "")).lower() else LlamaConfig
    return cls.from_dict({k: v for k, v in d.items() if k != "model_type"})


def vision_from_folder(folder: str) -> VisionConfig:
    """The VisionConfig of an HF CLIP/SigLIP folder (LLaVA's select layer -2; callers set their own)."""
    return vision_from_hf(vision_part(load_config(folder)), -2, "patch", preprocessor_lib.read(folder))


def vision_from_hf(vc, select_layer: int, select_feature: str, preprocessor: Optional[dict] = None) -> VisionConfig:
    kind = VISION_TYPES.get(vc.model_type)
    if kind is None:
        raise UnsupportedConfig(f"vision model_type '{vc.model_type}' is not supported (supported: {', '.join(VISION_TYPES)})")
    if kind == "siglip" and select_feature == "cls_patch":
        select_feature = "patch"  # SigLIP has no class token: all tokens are patches
    mean, std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else (SIGLIP_MEAN, SIGLIP_STD)
    preprocessor_lib.from_config(preprocessor, vc.image_size)  # checks that it fits the tower
    if preprocessor:
        mean = tuple(float(x) for x in preprocessor.get("image_mean", mean))
        std = tuple(float(x) for x in preprocessor.get("image_std", std))
    return VisionConfig(
        kind=kind, image_size=vc.image_size, patch_size=vc.patch_size, num_channels=vc.num_channels,
        hidden_size=vc.hidden_size, intermediate_size=vc.intermediate_size, num_layers=vc.num_hidden_layers,
        num_heads=vc.num_attention_heads, layer_norm_eps=vc.layer_norm_eps, hidden_act=vc.hidden_act,
        select_layer=select_layer, select_feature=select_feature, image_mean=mean, image_std=std,
    )


def vision_to_hf(v: VisionConfig, num_layers: int, use_head: bool = False):
    kw = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=num_layers,
              num_attention_heads=v.num_heads, num_channels=v.num_channels, image_size=v.image_size,
              patch_size=v.patch_size, hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps)
    if v.kind == "clip":
        return CLIPVisionConfig(**kw)
    return SiglipVisionConfig(vision_use_head=use_head, **kw)


def vision_layers_held(v: VisionConfig, extra_names: list[str]) -> int:
    """Vision layers of an exported tower: ours plus consecutive later layers kept aside at import."""
    n = num_layers_used(v)
    while any(x.startswith(f"vision.encoder.layers.{n}.") for x in extra_names):
        n += 1
    return n


def tower_to_hf(v: VisionConfig, extra_names: list[str]):
    """(HF vision config of the tower that exists, vision_feature_layer that selects our layer in it)."""
    n_used, n_total = num_layers_used(v), vision_layers_held(v, extra_names)
    use_head = any(x.startswith("vision.head.") for x in extra_names)
    return vision_to_hf(v, n_total, use_head), n_used - n_total - 1


def _rope(tc) -> tuple[float, Optional[dict]]:
    """(theta, scaling) from transformers 5 `rope_parameters` or 4.x `rope_theta` + `rope_scaling`."""
    params = getattr(tc, "rope_parameters", None)
    if params is None:
        params = dict(getattr(tc, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(tc, "rope_theta", 10000.0))
    params = dict(params)
    theta = float(params.pop("rope_theta", 10000.0))
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    kind = params.get("rope_type", "default")
    if kind == "default":
        return theta, None
    if kind not in ("linear", "llama3"):
        raise UnsupportedConfig(f"rope type '{kind}' is not supported (supported: default, linear, llama3)")
    return theta, params


def _ids(value):
    return value[0] if isinstance(value, list) and value else value


def decoder_from_hf(tc) -> DecoderConfig:
    if tc.model_type not in TEXT_TYPES:
        raise UnsupportedConfig(f"text model_type '{tc.model_type}' is not supported (supported: {', '.join(TEXT_TYPES)})")
    if getattr(tc, "attention_bias", False) or getattr(tc, "mlp_bias", False):
        raise UnsupportedConfig("LLaMA attention_bias / mlp_bias are not supported")
    if getattr(tc, "use_sliding_window", False) or (tc.model_type == "mistral" and getattr(tc, "sliding_window", None)):
        raise UnsupportedConfig("sliding-window attention is not supported")
    theta, scaling = _rope(tc)
    head_dim = getattr(tc, "head_dim", None)
    if head_dim == tc.hidden_size // tc.num_attention_heads:
        head_dim = None
    return DecoderConfig(
        vocab_size=tc.vocab_size, hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
        num_layers=tc.num_hidden_layers, num_heads=tc.num_attention_heads,
        num_kv_heads=getattr(tc, "num_key_value_heads", None) or None, head_dim=head_dim,
        rms_norm_eps=tc.rms_norm_eps, rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=tc.max_position_embeddings, qkv_bias=tc.model_type == "qwen2",
        tie_embeddings=bool(getattr(tc, "tie_word_embeddings", False)), hidden_act=tc.hidden_act,
        bos_token_id=_ids(tc.bos_token_id), eos_token_id=_ids(tc.eos_token_id), pad_token_id=_ids(tc.pad_token_id),
    )


def decoder_to_hf(d: DecoderConfig):
    rope = {"rope_type": "default", "rope_theta": d.rope_theta}
    if d.rope_scaling:
        rope = {**d.rope_scaling, "rope_theta": d.rope_theta}
    kw = dict(vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
              num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads, num_key_value_heads=d.kv_heads,
              rms_norm_eps=d.rms_norm_eps, rope_parameters=rope, max_position_embeddings=d.max_position_embeddings,
              tie_word_embeddings=d.tie_embeddings, hidden_act=d.hidden_act, bos_token_id=d.bos_token_id,
              eos_token_id=d.eos_token_id, pad_token_id=d.pad_token_id)
    if d.qkv_bias:
        if d.head_dim:
            raise UnsupportedConfig("Qwen2 configs have no head_dim option")
        return Qwen2Config(**kw)
    return LlamaConfig(head_dim=d.dim_per_head, **kw)
