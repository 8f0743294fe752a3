"""Key names of HF sub-model folders (a CLIP/SigLIP vision model, a causal LM) -> canonical names."""

from __future__ import annotations

from typing import Optional

VISION_ROOTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.", "head.")


def vision_key(key: str) -> Optional[str]:
    """Key of an HF CLIP/SigLIP (vision) model folder -> canonical."""
    if key.startswith("vision_model."):
        return "vision." + key[len("vision_model."):]
    return "vision." + key if key.startswith(VISION_ROOTS) else None


def lm_key(key: str) -> Optional[str]:
    """Key of an HF LlamaForCausalLM / Qwen2ForCausalLM folder -> canonical."""
    if key == "lm_head.weight":
        return key
    return "lm." + key[len("model."):] if key.startswith("model.") else None


def lm_name(name: str) -> Optional[str]:
    """canonical -> key of an HF causal LM folder."""
    if name == "lm_head.weight":
        return name
    return "model." + name[len("lm."):] if name.startswith("lm.") else None
