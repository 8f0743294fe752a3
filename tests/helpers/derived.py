"""Tiny PyTorch models of the derived projects' published structures (HF Llava parts + the project's
projector from test_projectors) written in each project's checkpoint layout."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2ForCausalLM,
    SiglipVisionModel,
)

from tests.helpers.convert_models import IMAGE_TOKEN, make_tokenizer, text_config, vision_config

SIZE = 42  # 3x3 patch grid: odd, so mlp_downsample pads and ldpnet's stride-2 block has a border


def tiny_llava(projector: torch.nn.Module, vision: str = "clip", text: str = "llama", seed: int = 0):
    """An HF Llava whose multi_modal_projector is `projector` (features [N, T, C] -> [N', T', D])."""
    torch.manual_seed(seed)
    vc = vision_config(vision)
    vc.image_size = SIZE
    cfg = LlavaConfig(vision_config=vc, text_config=text_config(text), image_token_index=IMAGE_TOKEN,
                      vision_feature_layer=-2, vision_feature_select_strategy="default" if vision == "clip" else "full",
                      projector_hidden_act="gelu", tie_word_embeddings=text == "qwen2")
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "class_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)
        for p in projector.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    model.model.multi_modal_projector = projector.eval()
    return model


def parts(hf) -> dict[str, dict[str, torch.Tensor]]:
    """The model's tensors by part, with module-relative names."""
    out = {"lm": {}, "vision": {}, "projector": {}}
    for k, v in hf.state_dict().items():
        v = v.detach().clone().contiguous()
        if k.startswith("model.language_model."):
            out["lm"]["model." + k[len("model.language_model."):]] = v
        elif k == "lm_head.weight":
            if not hf.config.tie_word_embeddings:
                out["lm"][k] = v
        elif k.startswith("model.vision_tower."):
            out["vision"]["vision_model." + k[len("model.vision_tower."):].removeprefix("vision_model.")] = v
        elif k.startswith("model.multi_modal_projector."):
            out["projector"][k[len("model.multi_modal_projector."):]] = v
    return out


def _save(tensors: dict, path: str, config: dict | None = None) -> None:
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def mm_keys(hf, projector_type: str) -> dict:
    c = hf.config
    return dict(mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=c.vision_config.hidden_size,
                mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_projector_type=projector_type,
                use_mm_proj=True, mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad")


def save_vision(hf, path: str) -> None:
    cls = CLIPVisionModel if hf.config.vision_config.model_type == "clip_vision_model" else SiglipVisionModel
    tower = cls(hf.config.vision_config)
    tower.load_state_dict({k.removeprefix("vision_model."): v for k, v in parts(hf)["vision"].items()})
    tower.save_pretrained(path)


def save_mobilevlm(hf, path: str) -> None:
    """MobileVLM / MobilePALO: LLaVA keys, ldpnet projector under model.mm_projector."""
    p = parts(hf)
    sd = {**p["lm"], **{"model.mm_projector." + k: v for k, v in p["projector"].items()},
          **{"model.vision_tower.vision_tower." + k: v for k, v in p["vision"].items()}}
    config = hf.config.text_config.to_dict()
    config.update(architectures=["MobileLlamaForCausalLM"], model_type="mobilevlm", **mm_keys(hf, "ldpnet"))
    _save(sd, path, config)
    make_tokenizer(path)


def save_vila(hf, path: str, era_keys: dict | None = None) -> None:
    """era_keys: top config keys of the VILA code that wrote it (default VILA-1.5's `s2`)."""
    p = parts(hf)
    c = hf.config
    llm_cls = Qwen2ForCausalLM if c.text_config.model_type == "qwen2" else LlamaForCausalLM
    llm = llm_cls(c.text_config)
    llm.load_state_dict({**p["lm"], **({"lm_head.weight": p["lm"]["model.embed_tokens.weight"]}
                                       if c.tie_word_embeddings else {})})
    llm.save_pretrained(os.path.join(path, "llm"))
    make_tokenizer(os.path.join(path, "llm"))
    save_vision(hf, os.path.join(path, "vision_tower"))
    with open(os.path.join(path, "vision_tower", "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "SiglipImageProcessor", "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                   "size": {"height": SIZE, "width": SIZE}}, f)
    proj_cfg = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
                "mm_projector_type": "mlp_downsample"}
    _save(p["projector"], os.path.join(path, "mm_projector"), proj_cfg)
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava", "llm_cfg": llm.config.to_dict(),
           "vision_tower_cfg": c.vision_config.to_dict(), "mm_projector_cfg": proj_cfg,
           "hidden_size": c.text_config.hidden_size, "mm_hidden_size": c.vision_config.hidden_size,
           "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch", "image_aspect_ratio": "resize",
           **({"s2": False} if era_keys is None else era_keys)}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(top, f, indent=2)


def torch_logits(hf, tokens: np.ndarray, pixels: np.ndarray, mean, std) -> np.ndarray:
    """pixels uint8 [N, H, W, 3] (all crops of all images, in order)."""
    x = (pixels.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    with torch.no_grad():
        return hf(input_ids=torch.tensor(tokens, dtype=torch.long),
                  pixel_values=torch.tensor(x.transpose(0, 3, 1, 2))).logits.numpy()
