"""Derived projects' checkpoint formats palo and vila (centurio, aligngpt: their own files): PyTorch models of the published
structures on random weights imported through `convert import` give the same logits (float32, 1e-4), and
import -> export reproduces every tensor and config exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM, SiglipVisionModel

from convert.cli import main
from tests.helpers import derived as dh
from tests.helpers.convert_models import IMAGE_TOKEN, assert_same_tensors, cli, prompt, tensors
from tests.helpers.mobilevlm_ldp import LDPNetProjector
from tests.helpers.vila_projector import MultimodalProjector
from vlm_jax.checkpoint import load_model_checkpoint
from vlm_jax.image_layout import image_layout
from vlm_jax.models.vit import num_layers_used
from vlm_jax.models.vlm import VLM


def ours(ckpt: str, tokens: np.ndarray, pixels: np.ndarray):
    """Logits of a CKPT on one row; pixels uint8 [M, K, H, W, 3]."""
    params, cfg = load_model_checkpoint(ckpt)
    out = jax.jit(VLM(cfg).apply)({"params": jax.tree.map(jnp.asarray, params)},
                                  {"tokens": jnp.asarray(tokens), "images": jnp.asarray(pixels[None])})
    return np.asarray(out), cfg


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, dh.SIZE, dh.SIZE, 3), dtype=np.uint8)


def same_json(a: str, b: str) -> None:
    with open(a) as f, open(b) as g:
        assert json.load(f) == json.load(g), (a, b)


def mobilevlm_ldp(inc: int = 32, ouc: int = 64) -> LDPNetProjector:
    return LDPNetProjector(SimpleNamespace(mm_hidden_size=inc, hidden_size=ouc))


def test_palo_mobilevlm_ldpnet(tmp_path):
    hf = dh.tiny_llava(mobilevlm_ldp())
    src = str(tmp_path / "mpalo")
    dh.save_mobilevlm(hf, src)
    dh.save_vision(hf, str(tmp_path / "clip"))
    cli("import", "--format", "palo", "--src", src, "--vision", str(tmp_path / "clip"), "--out", str(tmp_path / "ck"))
    imgs = pixels(2)
    toks = prompt(4, 2)  # 3x3 patches -> ldpnet stride 2 -> 2x2 tokens per image
    a, cfg = ours(str(tmp_path / "ck"), np.where(toks == IMAGE_TOKEN, -200, toks), imgs[:, None])
    assert cfg.projector.type == "ldpnet" and image_layout(cfg).tokens_per_image == 4
    b = dh.torch_logits(hf, toks, imgs, cfg.vision.image_mean, cfg.vision.image_std)
    assert np.abs(a - b).max() < 1e-4
    cli("export", "--format", "palo", "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "out"))
    assert_same_tensors(tensors(src), tensors(str(tmp_path / "out")))
    same_json(os.path.join(src, "config.json"), str(tmp_path / "out" / "config.json"))
    exported = tensors(str(tmp_path / "out"))
    assert "model.mm_projector.model.mb_block.2.block.1.fc1.weight" in exported
    # MobileVLM's own module loads the exported projector strictly and computes what it computed
    ldp = mobilevlm_ldp().eval()
    ldp.load_state_dict({k[len("model.mm_projector."):]: torch.from_numpy(v) for k, v in exported.items()
                         if k.startswith("model.mm_projector.")}, strict=True)
    feats = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(ldp(feats), hf.model.multi_modal_projector(feats), rtol=0, atol=0)


def test_palo_flat_names_and_stage1_projector(tmp_path):
    """The names without MobileVLM's `model.` (exported so by earlier versions of this converter) import to
    the same model; a stage-1 file with MobileVLM's projector names assembles with the tower and LLM again."""
    hf = dh.tiny_llava(mobilevlm_ldp())
    src = str(tmp_path / "mpalo")
    dh.save_mobilevlm(hf, src)
    dh.save_vision(hf, str(tmp_path / "clip"))
    cli("import", "--format", "palo", "--src", src, "--vision", str(tmp_path / "clip"), "--out", str(tmp_path / "ck"))
    p1, c1 = load_model_checkpoint(str(tmp_path / "ck"))
    flat = str(tmp_path / "flat")
    os.makedirs(flat)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), flat)
    save_file({k.replace("model.mm_projector.model.", "model.mm_projector."): torch.from_numpy(v)
               for k, v in tensors(src).items()}, os.path.join(flat, "model.safetensors"))
    cli("import", "--format", "palo", "--src", flat, "--vision", str(tmp_path / "clip"), "--out", str(tmp_path / "ck2"))
    p2, c2 = load_model_checkpoint(str(tmp_path / "ck2"))
    assert c2 == c1
    jax.tree.map(np.testing.assert_array_equal, p2, p1)
    # stage-1 file with MobileVLM's projector names, assembled with the tower and the LLM again
    cli("export", "--format", "palo", "--projector-only", "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "s1"))
    assert set(tensors(str(tmp_path / "s1"))) == {k for k in tensors(src) if k.startswith("model.mm_projector.model.")}
    llm = LlamaForCausalLM(hf.config.text_config)
    llm.model.load_state_dict(hf.model.language_model.state_dict())
    llm.lm_head.load_state_dict(hf.lm_head.state_dict())
    llm.save_pretrained(str(tmp_path / "llm"))
    cli("assemble", "--vision", str(tmp_path / "clip"), "--llm", str(tmp_path / "llm"), "--projector",
        str(tmp_path / "s1" / "mm_projector.bin"), "--projector-type", "ldpnet", "--out", str(tmp_path / "asm"))
    p3, c3 = load_model_checkpoint(str(tmp_path / "asm"))
    assert (c3.vision, c3.projector, c3.decoder) == (c1.vision, c1.projector, c1.decoder)
    jax.tree.map(np.testing.assert_array_equal, p3, p1)


@pytest.mark.parametrize("era", ["vila1.5", "nvila"])
def test_vila_mlp_downsample_folders(tmp_path, era, capsys):
    """VILA's own MultimodalProjector (DownSampleBlock of VILA-1.5 or of NVILA, which transposes the 2x2
    grid), told apart by the config keys of the code that saved it."""
    hf = dh.tiny_llava(MultimodalProjector(32, 64, nvila=era == "nvila"), vision="siglip")
    src = str(tmp_path / "vila")
    dh.save_vila(hf, src, {"s2": False} if era == "vila1.5" else {"s2": False, "dynamic_s2": False})
    cli("import", "--format", "vila", "--src", src, "--out", str(tmp_path / "ck"))
    imgs = pixels(1)
    toks = prompt(4, 1)  # 3x3 patches, padded to 4x4, 2x2 space-to-channel -> 4 tokens
    a, cfg = ours(str(tmp_path / "ck"), np.where(toks == IMAGE_TOKEN, -200, toks), imgs[:, None])
    assert (cfg.projector.type, cfg.projector.downsample_order, cfg.vision.kind, cfg.image_token_id) == (
        "mlp_downsample", era, "siglip", -200)
    b = dh.torch_logits(hf, toks, imgs, cfg.vision.image_mean, cfg.vision.image_std)
    assert np.abs(a - b).max() < 1e-4
    out = str(tmp_path / "out")
    cli("export", "--format", "vila", "--src", str(tmp_path / "ck"), "--out", out)
    same_json(os.path.join(src, "config.json"), os.path.join(out, "config.json"))
    for part in ("llm", "vision_tower", "mm_projector"):
        assert_same_tensors(tensors(os.path.join(src, part)), tensors(os.path.join(out, part)))
        same_json(os.path.join(src, part, "config.json"), os.path.join(out, part, "config.json"))
    assert os.path.exists(os.path.join(out, "llm", "tokenizer.json"))
    assert os.path.exists(os.path.join(out, "vision_tower", "preprocessor_config.json"))
    proj = MultimodalProjector(32, 64, nvila=era == "nvila")
    proj.load_state_dict({k: torch.from_numpy(v) for k, v in tensors(os.path.join(out, "mm_projector")).items()},
                         strict=True)
    for part, cls in (("llm", LlamaForCausalLM), ("vision_tower", SiglipVisionModel)):  # as VILA's builder loads them
        _, info = cls.from_pretrained(os.path.join(out, part), output_loading_info=True)
        assert not any(info.values()), (part, info)

    # a config without the keys of either era: exit 2 unless --downsample-order says which
    bare = str(tmp_path / "bare")
    shutil.copytree(src, bare)
    with open(os.path.join(bare, "config.json")) as f:
        top = {k: v for k, v in json.load(f).items() if k not in ("s2", "dynamic_s2")}
    with open(os.path.join(bare, "config.json"), "w") as f:
        json.dump(top, f)
    capsys.readouterr()
    assert main(["import", "--format", "vila", "--src", bare, "--out", str(tmp_path / "ck3"), "--no-progress"]) == 2
    assert "--downsample-order" in capsys.readouterr().err
    cli("import", "--format", "vila", "--src", bare, "--out", str(tmp_path / "ck3"), "--downsample-order", era)
    np.testing.assert_array_equal(ours(str(tmp_path / "ck3"), np.where(toks == IMAGE_TOKEN, -200, toks),
                                       imgs[:, None])[0], a)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["palo", "vila"])
def test_fresh_configs_reimport_to_the_same_model(tmp_path, fmt):
    """A CKPT without the source configs (as training writes) exports configs that import back."""
    builders = {"palo": (mobilevlm_ldp(), "clip", "llama", dh.save_mobilevlm),
                "vila": (MultimodalProjector(32, 64, nvila=True), "siglip", "llama", dh.save_vila)}
    proj, vision, text, save = builders[fmt]
    hf = dh.tiny_llava(proj, vision=vision, text=text)
    save(hf, str(tmp_path / "src"))
    extra = ["--vision", str(tmp_path / "clip")] if fmt == "palo" else []
    if fmt == "palo":
        dh.save_vision(hf, str(tmp_path / "clip"))
    cli("import", "--format", fmt, "--src", str(tmp_path / "src"), "--out", str(tmp_path / "ck"), *extra)
    os.remove(tmp_path / "ck" / "conversion.json")
    os.remove(tmp_path / "ck" / "extra_tensors.safetensors")
    cli("export", "--format", fmt, "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "out"))
    cli("import", "--format", fmt, "--src", str(tmp_path / "out"), "--out", str(tmp_path / "ck2"), *extra)
    (p1, c1), (p2, c2) = load_model_checkpoint(str(tmp_path / "ck")), load_model_checkpoint(str(tmp_path / "ck2"))
    # the tower is cut after the last layer used (as training checkpoints hold it): same model
    assert num_layers_used(c2.vision) == num_layers_used(c1.vision)
    v1 = dataclasses.replace(c1.vision, num_layers=0, select_layer=0)
    assert (v1, c1.projector, c1.decoder, c1.image_token_id) == (
        dataclasses.replace(c2.vision, num_layers=0, select_layer=0), c2.projector, c2.decoder, c2.image_token_id)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
