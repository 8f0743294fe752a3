"""Exact round trips: HF Llava -> CKPT -> HF Llava and original LLaVA -> CKPT -> original LLaVA
give the same tensors (bytes, names, dtypes) and configs that transformers loads."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from convert.tensor_io import TensorReader
from tests.helpers.convert_models import (
    IMAGE_TOKEN,
    assert_same_tensors,
    ckpt_logits,
    cli,
    hf_logits,
    images,
    load_hf,
    make_hf_llava,
    make_tokenizer,
    prompt,
    save_original,
    save_vision_folder,
    tensors,
    tokens_per_image,
)


def rename_hf5(src: str, dst: str, vision_model: bool) -> None:
    """Rewrite a transformers-5-saved folder (hf4 names) with the model.language_model.* names."""
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, "model.safetensors"))
    out = {}
    for k, v in TensorReader(src).iter_tensors():
        if k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model."):]
        elif k.startswith("language_model.lm_head."):
            k = k[len("language_model."):]
        else:
            k = "model." + k
        if vision_model:
            k = k.replace("model.vision_tower.", "model.vision_tower.vision_model.")
        out[k] = torch.from_numpy(v)
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("variant", ["hf4-clip-llama", "hf5-clip-llama", "hf5-vision_model-clip-llama3",
                                     "hf4-siglip-qwen2-bf16-sharded"])
def test_hf_llava_round_trip_exact(tmp_path, variant):
    vision, text = ("siglip", "qwen2") if "siglip" in variant else ("clip", "llama3" if "llama3" in variant else "llama")
    hf = make_hf_llava(str(tmp_path / "saved"), vision, text, -2, "full" if vision == "siglip" else "default")
    src = str(tmp_path / "saved")
    if "bf16" in variant:
        hf = hf.to(torch.bfloat16)
        hf.save_pretrained(src, max_shard_size="20KB")
        assert os.path.exists(os.path.join(src, "model.safetensors.index.json"))
    if "hf5" in variant:
        rename_hf5(src, str(tmp_path / "src"), vision_model="vision_model" in variant)
        src = str(tmp_path / "src")
    make_tokenizer(src)
    cli("import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / "ckpt"))
    args = ["--max-shard-size", "20KB"] if "sharded" in variant else []
    cli("export", "--format", "hf-llava", "--src", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), *args)
    out = str(tmp_path / "out")
    assert_same_tensors(tensors(src), tensors(out))
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
        assert json.load(f) == json.load(g)
    if "sharded" in variant:
        assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    reloaded = load_hf(out)
    for k, v in hf.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k


def test_hf_llava_transformers4_config(tmp_path):
    """A 4.x config.json (rope_theta + rope_scaling, image_token_index) imports to the same model."""
    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama3", -2, "default")
    with open(tmp_path / "hf" / "config.json") as f:
        cfg = json.load(f)
    rope = cfg["text_config"].pop("rope_parameters")
    cfg["text_config"]["rope_theta"] = rope.pop("rope_theta")
    cfg["text_config"]["rope_scaling"] = rope
    cfg["transformers_version"] = "4.45.0"
    with open(tmp_path / "hf" / "config.json", "w") as f:
        json.dump(cfg, f)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    with open(tmp_path / "hf" / "preprocessor_config.json", "w") as f:
        json.dump({"image_processor_type": "CLIPImageProcessor", "image_mean": mean, "image_std": std}, f)
    cli("import", "--format", "hf-llava", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"))
    toks, imgs = prompt(tokens_per_image(hf), 1), images(1)
    ours, mcfg = ckpt_logits(str(tmp_path / "ckpt"), toks, imgs)
    assert mcfg.decoder.rope_scaling["rope_type"] == "llama3" and mcfg.decoder.rope_theta == 500000.0
    assert list(mcfg.vision.image_mean) == mean and list(mcfg.vision.image_std) == std
    assert np.abs(ours - hf_logits(hf, toks, imgs, mcfg.vision.image_mean, mcfg.vision.image_std)).max() < 1e-4


def test_export_without_extras_is_consistent(tmp_path):
    """A CKPT without the kept-aside tensors (as training writes) exports a config that matches what
    exists: vision num_hidden_layers = held layers, vision_feature_layer = -1; same logits."""
    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama", -2, "default")
    ckpt = tmp_path / "ckpt"
    cli("import", "--format", "hf-llava", "--src", str(tmp_path / "hf"), "--out", str(ckpt))
    os.remove(ckpt / "extra_tensors.safetensors")
    os.remove(ckpt / "conversion.json")
    cli("export", "--format", "hf-llava", "--src", str(ckpt), "--out", str(tmp_path / "out"))
    reloaded = load_hf(str(tmp_path / "out"))
    assert reloaded.config.vision_config.num_hidden_layers == 2 and reloaded.config.vision_feature_layer == -1
    toks, imgs = prompt(tokens_per_image(hf), 1), images(1)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    np.testing.assert_allclose(hf_logits(reloaded, toks, imgs, mean, std), hf_logits(hf, toks, imgs, mean, std),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights,with_tower", [("bin", True), ("safetensors", False)])
def test_original_llava_round_trip_exact(tmp_path, weights, with_tower):
    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama", -2, "default")
    src = str(tmp_path / "orig")
    save_original(hf, src, weights, with_tower)
    save_vision_folder(hf, str(tmp_path / "clip"))
    cli("import", "--format", "llava", "--src", src, "--vision", str(tmp_path / "clip"), "--out", str(tmp_path / "ck"))
    cli("export", "--format", "llava", "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "out"), "--weights", weights)
    assert_same_tensors(tensors(src), tensors(str(tmp_path / "out")))
    with open(os.path.join(src, "config.json")) as f, open(tmp_path / "out" / "config.json") as g:
        assert json.load(f) == json.load(g)
    # stage-1 projector file
    cli("export", "--format", "llava", "--projector-only", "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "s1"))
    proj = tensors(str(tmp_path / "s1" / "mm_projector.bin"))
    assert_same_tensors(proj, {k: v for k, v in tensors(src).items() if "mm_projector" in k})


def test_assemble_equals_hf_llava(tmp_path):
    """vision folder + LLM folder + stage-1 mm_projector.bin == the HF Llava made of the same parts."""
    from transformers import LlamaForCausalLM

    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama", -2, "default")
    save_vision_folder(hf, str(tmp_path / "clip"))
    lm = LlamaForCausalLM(hf.config.text_config)
    lm.model.load_state_dict(hf.model.language_model.state_dict())
    lm.lm_head.load_state_dict(hf.lm_head.state_dict())
    lm.save_pretrained(str(tmp_path / "llm"))
    make_tokenizer(str(tmp_path / "llm"))
    sd = {f"model.mm_projector.{2 * (int(k[7]) - 1)}.{k.split('.')[-1]}": v.clone()
          for k, v in hf.model.multi_modal_projector.state_dict().items()}
    torch.save(sd, str(tmp_path / "mm_projector.bin"))
    cli("assemble", "--vision", str(tmp_path / "clip"), "--llm", str(tmp_path / "llm"), "--projector",
        str(tmp_path / "mm_projector.bin"), "--projector-type", "mlp2x_gelu", "--out", str(tmp_path / "ck"))
    toks, imgs = prompt(tokens_per_image(hf), 1), images(1)
    ours, cfg = ckpt_logits(str(tmp_path / "ck"), np.where(toks == IMAGE_TOKEN, -200, toks), imgs)
    assert cfg.image_token_id == -200
    assert np.abs(ours - hf_logits(hf, toks, imgs, cfg.vision.image_mean, cfg.vision.image_std)).max() < 1e-4

    # fresh projector: seeded, and an <image> token added -> exportable to HF Llava
    for out in ("f1", "f2"):
        cli("assemble", "--vision", str(tmp_path / "clip"), "--llm", str(tmp_path / "llm"), "--image-token", "add",
            "--seed", "3", "--out", str(tmp_path / out))
    a, cfg_a = ckpt_logits(str(tmp_path / "f1"), toks, imgs)
    b, _ = ckpt_logits(str(tmp_path / "f2"), toks, imgs)
    np.testing.assert_array_equal(a, b)
    assert cfg_a.image_token_id == IMAGE_TOKEN  # the tokenizer already had <image>
    cli("export", "--format", "hf-llava", "--src", str(tmp_path / "f1"), "--out", str(tmp_path / "f1hf"))
    reloaded = load_hf(str(tmp_path / "f1hf"))
    ref = hf_logits(reloaded, toks, imgs, cfg_a.vision.image_mean, cfg_a.vision.image_std)
    assert np.abs(a - ref).max() < 1e-4
