"""Tiny random transformers LLaVA models on disk, and logits of them and of our imported model."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

from convert.cli import main as convert_main
from convert.tensor_io import TensorReader
from vlm_jax.checkpoint import load_model_checkpoint
from vlm_jax.image_layout import image_layout
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
        return image_layout(cfg_or_hf).tokens_per_image
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


def tensors(path: str) -> dict:
    return dict(TensorReader(path).iter_tensors())


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def load_hf(path: str) -> LlavaForConditionalGeneration:
    model, info = LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    return model.eval()


def save_original(hf, path: str, weights: str, with_tower: bool) -> None:
    import json

    os.makedirs(path, exist_ok=True)
    sd = original_state_dict(hf)
    if not with_tower:
        sd = {k: v for k, v in sd.items() if not k.startswith("model.vision_tower.")}
    if weights == "bin":
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    else:
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    c = hf.config
    config = c.text_config.to_dict()
    config.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama",
                  mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=c.vision_config.hidden_size,
                  mm_vision_select_layer=c.vision_feature_layer, mm_vision_select_feature="patch",
                  mm_projector_type="mlp2x_gelu", use_mm_proj=True, mm_use_im_start_end=False,
                  mm_use_im_patch_token=False, image_aspect_ratio="pad")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def save_vision_folder(hf, path: str) -> None:
    tower = CLIPVisionModel(hf.config.vision_config)
    tower.vision_model.load_state_dict(hf.model.vision_tower.vision_model.state_dict()) \
        if hasattr(hf.model.vision_tower, "vision_model") else tower.load_state_dict(hf.model.vision_tower.state_dict())
    tower.save_pretrained(path)


def original_state_dict(hf) -> dict:
    """HF Llava state dict renamed to the original LLaVA (LlavaLlamaForCausalLM) key names."""
    out = {}
    for k, v in hf.state_dict().items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        elif k.startswith("model.multi_modal_projector.linear_"):
            idx, rest = k[len("model.multi_modal_projector.linear_"):].split(".", 1)
            k = f"model.mm_projector.{2 * (int(idx) - 1)}.{rest}"
        elif k.startswith("model.vision_tower."):
            k = "model.vision_tower.vision_tower.vision_model." + k[len("model.vision_tower."):]
        out[k] = v.detach().clone().contiguous()
    return out
