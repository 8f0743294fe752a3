"""Random tiny HF LLaVA models (three architectures), our params for the same weights, a word-level
tokenizer folder, for the generation / inference tests. Logits are scaled up so greedy argmax is
stable across float32 rounding."""

from __future__ import annotations

import functools
import os

import numpy as np

from vlm_jax.config import DecoderConfig, ModelConfig, VisionConfig

VOCAB = 120
IMAGE_ID = VOCAB - 1
ARCHS = ("clip-llama", "clip-llama3", "siglip-qwen2")
WORDS = ("a chat between curious user and an artificial intelligence assistant the gives helpful detailed "
         "polite answers to user's questions USER: ASSISTANT: what is in this image ? describe it please "
         "cat dog red blue one two yes no <|im_start|> <|im_end|> system you are").split()


def hf_model(arch: str, seed: int = 0, image_size: int = 28, layers: int = 2):
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    vkw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               image_size=image_size, patch_size=14)
    vc = CLIPVisionConfig(projection_dim=16, **vkw) if arch.startswith("clip") else SiglipVisionConfig(**vkw)
    tkw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
               max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "clip-llama":
        tc = LlamaConfig(num_key_value_heads=4, **tkw)
    elif arch == "clip-llama3":
        tc = LlamaConfig(num_key_value_heads=2, rope_theta=500000.0, **tkw,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    else:
        tc = Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **tkw)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_ID, vision_feature_layer=-2,
                      vision_feature_select_strategy="default" if arch.startswith("clip") else "full",
                      projector_hidden_act="gelu", tie_word_embeddings=tc.tie_word_embeddings)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # well-separated logits
        model.get_output_embeddings().weight.mul_(30.0)
    model.generation_config.pad_token_id = 0
    return model


def our_config(hf) -> ModelConfig:
    vc, tc = hf.config.vision_config, hf.config.text_config
    siglip = vc.model_type.startswith("siglip")
    rope = getattr(tc, "rope_parameters", None) or {}
    return ModelConfig(
        vision=VisionConfig(kind="siglip" if siglip else "clip", image_size=vc.image_size, patch_size=vc.patch_size,
                            hidden_size=vc.hidden_size, intermediate_size=vc.intermediate_size,
                            num_layers=vc.num_hidden_layers, num_heads=vc.num_attention_heads, select_layer=-2,
                            hidden_act=vc.hidden_act, layer_norm_eps=vc.layer_norm_eps,
                            image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
        decoder=DecoderConfig(vocab_size=tc.vocab_size, hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
                              num_layers=tc.num_hidden_layers, num_heads=tc.num_attention_heads,
                              num_kv_heads=tc.num_key_value_heads, rms_norm_eps=tc.rms_norm_eps,
                              rope_theta=float(rope.get("rope_theta", 10000.0)),
                              rope_scaling=dict(rope) if rope.get("rope_type", "default") != "default" else None,
                              max_position_embeddings=tc.max_position_embeddings,
                              qkv_bias=tc.model_type == "qwen2", tie_embeddings=bool(tc.tie_word_embeddings),
                              bos_token_id=1, eos_token_id=2, pad_token_id=0),
        image_token_id=IMAGE_ID,
    )


def our_params(hf, cfg: ModelConfig) -> dict:
    """HF LLaVA state dict -> our (scanned) param tree."""
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}

    def one(suffix):
        keys = [k for k in sd if k.endswith(suffix)]
        assert len(keys) == 1, (suffix, keys)
        return sd[keys[0]]

    vp = [k for k in sd if "embeddings.patch_embedding.weight" in k][0].split("embeddings.patch_embedding")[0]
    nv = cfg.vision.num_layers + 1 + cfg.vision.select_layer  # layers up to the selected hidden state
    vt = {"patch_embedding": {"kernel": sd[vp + "embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)},
          "position_embedding": sd[vp + "embeddings.position_embedding.weight"]}
    if vp + "embeddings.patch_embedding.bias" in sd:
        vt["patch_embedding"]["bias"] = sd[vp + "embeddings.patch_embedding.bias"]
    if vp + "embeddings.class_embedding" in sd:
        vt["class_embedding"] = sd[vp + "embeddings.class_embedding"]
    if vp + "pre_layrnorm.weight" in sd:
        vt["pre_layernorm"] = {"scale": sd[vp + "pre_layrnorm.weight"], "bias": sd[vp + "pre_layrnorm.bias"]}
    names = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
             "out_proj": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    vt["layers"] = {}
    for ours, theirs in names.items():
        vt["layers"][ours] = {
            "kernel": np.stack([sd[f"{vp}encoder.layers.{i}.{theirs}.weight"].T for i in range(nv)]),
            "bias": np.stack([sd[f"{vp}encoder.layers.{i}.{theirs}.bias"] for i in range(nv)])}
    for ln in ("layer_norm1", "layer_norm2"):
        vt["layers"][ln] = {"scale": np.stack([sd[f"{vp}encoder.layers.{i}.{ln}.weight"] for i in range(nv)]),
                            "bias": np.stack([sd[f"{vp}encoder.layers.{i}.{ln}.bias"] for i in range(nv)])}
    proj = {f"linear_{i}": {"kernel": one(f"multi_modal_projector.linear_{i}.weight").T,
                            "bias": one(f"multi_modal_projector.linear_{i}.bias")} for i in (1, 2)}
    lp = [k for k in sd if k.endswith("layers.0.self_attn.q_proj.weight") and "vision" not in k][0].split("layers.0.")[0]
    n = cfg.decoder.num_layers
    dec = {"embed_tokens": {"embedding": sd[lp + "embed_tokens.weight"]}, "norm": {"scale": sd[lp + "norm.weight"]},
           "layers": {}}
    if not cfg.decoder.tie_embeddings:
        dec["lm_head"] = {"kernel": sd["lm_head.weight"].T}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        dec["layers"][name] = {"kernel": np.stack([sd[f"{lp}layers.{i}.self_attn.{name}.weight"].T for i in range(n)])}
        if name != "o_proj" and cfg.decoder.qkv_bias:
            dec["layers"][name]["bias"] = np.stack([sd[f"{lp}layers.{i}.self_attn.{name}.bias"] for i in range(n)])
    for name in ("gate_proj", "up_proj", "down_proj"):
        dec["layers"][name] = {"kernel": np.stack([sd[f"{lp}layers.{i}.mlp.{name}.weight"].T for i in range(n)])}
    for name in ("input_layernorm", "post_attention_layernorm"):
        dec["layers"][name] = {"scale": np.stack([sd[f"{lp}layers.{i}.{name}.weight"] for i in range(n)])}
    return {"vision_tower": vt, "projector": proj, "decoder": dec}


@functools.lru_cache(maxsize=None)
def tiny(arch: str, seed: int = 0):
    """-> (hf_model, our ModelConfig, our params as numpy); cached, treat as read-only."""
    hf = hf_model(arch, seed)
    cfg = our_config(hf)
    return hf, cfg, our_params(hf, cfg)


def write_tokenizer(folder: str) -> str:
    """A word-level fast tokenizer: <unk>=0 <s>=1 </s>=2, words, <image>=IMAGE_ID."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    for i in range(len(vocab), IMAGE_ID):
        vocab[f"w{i}"] = i
    vocab["<image>"] = IMAGE_ID
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    os.makedirs(folder, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def write_image(path: str, size: int = 28, seed: int = 0) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size + 6 * seed % 11, 3), dtype=np.uint8)).save(path)
    return path


def write_checkpoint(folder: str, arch: str = "clip-llama") -> str:
    """The tiny model of `arch` as a CKPT folder with the word-level tokenizer (folder/ckpt)."""
    from vlm_jax.checkpoint import save_model_checkpoint

    _, cfg, params = tiny(arch)
    tok = write_tokenizer(os.path.join(folder, "tok"))
    return save_model_checkpoint(os.path.join(folder, "ckpt"), params, cfg, tokenizer_dir=tok)
