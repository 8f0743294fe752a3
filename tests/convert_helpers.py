"""Tiny random transformers LLaVA models on disk, and logits of them and of our imported model."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config,
                          SiglipVisionConfig)

from convert.cli import main as convert_main
from vlm_jax.checkpoint import load_model_checkpoint
from vlm_jax.models.vlm import VLM

IMAGE_SIZE, PATCH = 28, 14
VOCAB = 120
IMAGE_TOKEN = 119

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}


def vision_config(kind: str, layers: int = 3):
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
              image_size=IMAGE_SIZE, patch_size=PATCH)
    return CLIPVisionConfig(projection_dim=16, **kw) if kind == "clip" else SiglipVisionConfig(**kw)


def text_config(kind: str):
    kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "llama":  # MHA
        return LlamaConfig(**kw)
    if kind == "llama3":  # GQA + llama3 rope scaling
        return LlamaConfig(num_key_value_heads=2, rope_parameters=dict(LLAMA3_ROPE), **kw)
    return Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **kw)  # qkv bias, tied


def make_hf_llava(path: str, vision: str = "clip", text: str = "llama", select_layer: int = -2,
                  strategy: str = "default", seed: int = 0, **save_kw) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = LlavaConfig(vision_config=vision_config(vision), text_config=text_config(text),
                      image_token_index=IMAGE_TOKEN, vision_feature_layer=select_layer,
                      vision_feature_select_strategy=strategy, projector_hidden_act="gelu",
                      tie_word_embeddings=text == "qwen2")
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # make norms/biases non-trivial so that a wrong mapping shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "class_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, **save_kw)
    return model


def cli(*argv: str) -> None:
    rc = convert_main([*argv, "--no-progress"])
    assert rc == 0, f"convert {' '.join(argv)} failed with exit code {rc}"


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def prompt(n_tokens_per_image: int, n_images: int, image_id: int = IMAGE_TOKEN) -> np.ndarray:
    toks = [1, 5, 6]
    for i in range(n_images):
        toks += [image_id] * n_tokens_per_image + [7 + i, 8, 9]
    return np.asarray([toks + [10, 11]], np.int32)


def hf_logits(model, tokens: np.ndarray, imgs: np.ndarray, mean, std) -> np.ndarray:
    x = (imgs.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    pix = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long), pixel_values=pix).logits.numpy()


_APPLY: dict = {}


def ckpt_logits(ckpt: str, tokens: np.ndarray, imgs: np.ndarray):
    """Logits of a CKPT on one row with the images in order; also returns the config."""
    params, cfg = load_model_checkpoint(ckpt)
    batch = {"tokens": jnp.asarray(tokens), "images": jnp.asarray(imgs[None, :, None])}
    key = repr(cfg)  # one compile per model config across tests
    if key not in _APPLY:
        _APPLY[key] = jax.jit(VLM(cfg).apply)
    out = _APPLY[key]({"params": jax.tree.map(jnp.asarray, params)}, batch)
    return np.asarray(out), cfg


def tokens_per_image(cfg_or_hf) -> int:
    if hasattr(cfg_or_hf, "vision"):
        return VLM.tokens_per_image(cfg_or_hf)
    c = cfg_or_hf.config
    n = (IMAGE_SIZE // PATCH) ** 2
    return n + (1 if c.vision_config.model_type == "clip_vision_model" and c.vision_feature_select_strategy == "full" else 0)


def make_tokenizer(path: str) -> None:
    """A word-level tokenizer whose last id (VOCAB - 1) is `<image>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB - 1)}, "<image>": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=["<image>"])
    fast.save_pretrained(path)
