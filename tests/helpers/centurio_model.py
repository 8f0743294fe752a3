"""A tiny Centurio as its training code builds it (timm SigLIP tower, LlavaMultiModalAdapter, a causal LM),
saved with the modules' own state_dict() names, and its logits (Centurio's forward when the prompt already
holds one placeholder per image feature: the features replace those embeddings in order)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlavaConfig, Qwen2ForCausalLM

from convert.formats import centurio
from tests.helpers.centurio_projectors import LlavaMultiModalAdapter
from tests.helpers.convert_models import IMAGE_TOKEN, make_tokenizer, text_config
from tests.helpers.timm_siglip import centurio_tower

TIMM_NAME = "vit_tiny_patch14_siglip_42"  # a test tower, added to convert's table of timm towers
SIZE, PATCH, WIDTH, DEPTH, HEADS, MLP = 42, 14, 32, 3, 4, 64


def register_tiny_tower(monkeypatch) -> None:
    monkeypatch.setitem(centurio.TIMM_TOWERS, TIMM_NAME, centurio.TimmTower(SIZE, PATCH, WIDTH, DEPTH, HEADS, MLP))


def build(multi_scale: int = 2, adapter_type: str = "multiscale-pool", seed: int = 0):
    torch.manual_seed(seed)
    tc = text_config("qwen2")
    config = SimpleNamespace(adapter_type=adapter_type, adapter_multi_scale=multi_scale,
                             vision_config=SimpleNamespace(hidden_size=WIDTH), text_config=tc)
    model = SimpleNamespace(
        vision_tower=centurio_tower(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                                    mlp_ratio=MLP / WIDTH).eval(),
        multi_modal_projector=LlavaMultiModalAdapter(config).eval(),
        language_model=Qwen2ForCausalLM(tc).eval(), config=config)
    with torch.no_grad():
        for part in (model.vision_tower, model.multi_modal_projector, model.language_model):
            for name, p in part.named_parameters():
                p.add_(torch.randn_like(p) * (0.1 if (name.endswith("bias") or "norm" in name) else 0.02))
    return model


def state_dict(model) -> dict:
    out = {}
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        out.update({f"{part}.{k}": v.detach().clone().contiguous() for k, v in getattr(model, part).state_dict().items()})
    return out


def config_json(model) -> dict:
    """As Centurio's LlavaModule sets it up (src/modules/modeling/llava_module.py) and save_pretrained writes it."""
    c = LlavaConfig(text_config=model.config.text_config.to_dict(), image_token_index=IMAGE_TOKEN,
                    vision_feature_select_strategy="full", architectures=["LlavaForConditionalGeneration"]).to_dict()
    c["vision_config"]["hidden_size"] = WIDTH
    c.update(timm_model=TIMM_NAME, adapter_type=model.config.adapter_type,
             adapter_multi_scale=model.config.adapter_multi_scale)
    return c


def save(model, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    save_file(state_dict(model), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_json(model), f, indent=2)
    make_tokenizer(path)


def logits(model, tokens: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """crops uint8 [N, H, W, 3]: every image's crops (global view first), in order."""
    x = (crops.astype(np.float32) / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        feats = model.multi_modal_projector(model.vision_tower(torch.tensor(x.transpose(0, 3, 1, 2))))
        ids = torch.tensor(tokens, dtype=torch.long)
        embeds = model.language_model.get_input_embeddings()(ids)
        embeds[ids == IMAGE_TOKEN] = feats.reshape(-1, feats.shape[-1])
        return model.language_model(inputs_embeds=embeds).logits.numpy()
