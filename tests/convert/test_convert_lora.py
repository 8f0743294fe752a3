"""LoRA in the converter: merged export, PEFT adapter export (loaded by `peft`), PEFT adapter import."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from transformers import LlavaForConditionalGeneration

from convert import engine, lora
from convert.cli import main
from tests.helpers.convert_models import (
    assert_same_tensors,
    ckpt_logits,
    cli,
    hf_logits,
    images,
    load_hf,
    make_hf_llava,
    make_tokenizer,
    prompt,
    tensors,
    tokens_per_image,
)
from vlm_jax.config import LoRAConfig
from vlm_jax.models.vlm import VLM


def add_adapters(base: str, out: str, rank: int = 4, alpha: float = 8.0, dropout: float = 0.05,
                 targets=None, seed: int = 0) -> None:
    """A CKPT like a LoRA training run writes: the base params plus random (non-zero) adapters."""
    ck = engine.read_ckpt(base)
    lcfg = LoRAConfig(rank=rank, alpha=alpha, dropout=dropout)
    if targets:
        lcfg.target_modules = targets
    cfg = dataclasses.replace(ck.cfg, lora=lcfg)
    shapes = VLM(cfg).abstract_params()
    rng = np.random.default_rng(seed)
    params = ck.params
    for e in lora.adapted(cfg):
        for which in ("lora_a", "lora_b"):
            path = e.path[:-1] + (which,)
            shape = engine.mapping.get_leaf(shapes, path).shape
            engine.mapping.set_leaf(params, path, (rng.normal(size=shape) * 0.3).astype(np.float32))
    os.makedirs(out)
    for name in (engine.CONVERSION, f"{engine.EXTRAS}.safetensors"):
        shutil.copy2(os.path.join(base, name), os.path.join(out, name))
    engine.save_model_folder(out, params, cfg, ck.tokenizer_dir, {})


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    hf = make_hf_llava(str(tmp / "hf"), "clip", "llama3", -2, "default")
    make_tokenizer(str(tmp / "hf"))
    cli("import", "--format", "hf-llava", "--src", str(tmp / "hf"), "--out", str(tmp / "base"))
    add_adapters(str(tmp / "base"), str(tmp / "lora"))
    toks, imgs = prompt(tokens_per_image(hf), 1), images(1)
    ours, cfg = ckpt_logits(str(tmp / "lora"), toks, imgs)
    base, _ = ckpt_logits(str(tmp / "base"), toks, imgs)
    assert np.abs(ours - base).max() > 1e-2, "the adapters must change the logits"
    return tmp, hf, toks, imgs, ours, cfg


def test_peft_adapter_loads_in_peft_with_the_same_logits(adapted):
    import peft

    tmp, hf, toks, imgs, ours, cfg = adapted
    out = str(tmp / "adapter")
    cli("export", "--format", "hf-llava", "--lora", "peft", "--src", str(tmp / "lora"), "--out", out,
        "--base-model", "tiny-llava")
    with open(os.path.join(out, "adapter_config.json")) as f:
        conf = json.load(f)
    assert (conf["peft_type"], conf["r"], conf["lora_alpha"], conf["lora_dropout"]) == ("LORA", 4, 8.0, 0.05)
    assert conf["task_type"] is None and conf["bias"] == "none" and conf["base_model_name_or_path"] == "tiny-llava"
    with safe_open(os.path.join(out, "adapter_model.safetensors"), "np") as f:
        keys = set(f.keys())
        a = f.get_tensor("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight")
        b = f.get_tensor("base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.weight")
    assert a.shape == (4, 64) and b.shape == (64, 4)
    assert len(keys) == 2 * 2 * 7

    base = LlavaForConditionalGeneration.from_pretrained(str(tmp / "hf")).eval()
    model = peft.PeftModel.from_pretrained(base, out).eval()
    # PEFT adapted exactly the modules we wrote (not, e.g., the vision tower's q_proj)
    assert set(peft.get_peft_model_state_dict(model)) == keys
    theirs = hf_logits(model, toks, imgs, cfg.vision.image_mean, cfg.vision.image_std)
    assert np.abs(ours - theirs).max() < 1e-4


def test_merged_and_base_export(adapted):
    tmp, hf, toks, imgs, ours, cfg = adapted
    cli("export", "--format", "hf-llava", "--src", str(tmp / "lora"), "--out", str(tmp / "merged"))
    merged = load_hf(str(tmp / "merged"))
    assert np.abs(ours - hf_logits(merged, toks, imgs, cfg.vision.image_mean, cfg.vision.image_std)).max() < 1e-4
    cli("export", "--format", "hf-llava", "--lora", "base", "--src", str(tmp / "lora"), "--out", str(tmp / "b"))
    assert_same_tensors(tensors(str(tmp / "hf")), tensors(str(tmp / "b")))
    # original LLaVA layout: merged too
    cli("export", "--format", "llava", "--src", str(tmp / "lora"), "--out", str(tmp / "orig"))
    got = tensors(str(tmp / "orig"))["model.layers.0.self_attn.q_proj.weight"]
    want = tensors(str(tmp / "merged"))["language_model.model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(got, want)


def test_peft_import_restores_the_adapter_ckpt(adapted, capsys):
    tmp, hf, toks, imgs, ours, cfg = adapted
    out = str(tmp / "adapter2")
    cli("export", "--format", "hf-llava", "--lora", "peft", "--src", str(tmp / "lora"), "--out", out)
    cli("import", "--format", "peft", "--src", out, "--base", str(tmp / "base"), "--out", str(tmp / "lora2"))
    a, b = engine.read_ckpt(str(tmp / "lora")), engine.read_ckpt(str(tmp / "lora2"))
    assert (b.cfg.lora.rank, b.cfg.lora.alpha, b.cfg.lora.dropout) == (4, 8.0, 0.05)
    flat_a = engine.mapping.leaf_paths(a.params)
    assert sorted(flat_a) == sorted(engine.mapping.leaf_paths(b.params))
    for p in flat_a:
        np.testing.assert_array_equal(engine.mapping.get_leaf(a.params, p), engine.mapping.get_leaf(b.params, p))
    # the other layouts' module names (LLaVA / MobileVLM / AlignGPT: model.layers.*, VILA: llm.model.layers.*,
    # Centurio: language_model.model.layers.*) import back too
    for fmt in ("llava", "vila", "centurio"):
        cli("export", "--format", fmt, "--lora", "peft", "--src", str(tmp / "lora"), "--out", str(tmp / fmt))
        cli("import", "--format", "peft", "--src", str(tmp / fmt), "--base", str(tmp / "base"),
            "--out", str(tmp / f"{fmt}-ck"))
        c = engine.read_ckpt(str(tmp / f"{fmt}-ck"))
        for p in flat_a:
            np.testing.assert_array_equal(engine.mapping.get_leaf(a.params, p), engine.mapping.get_leaf(c.params, p))
    # a round trip of the whole model through hf-llava is still exact
    cli("export", "--format", "hf-llava", "--lora", "base", "--src", str(tmp / "lora2"), "--out", str(tmp / "b2"))
    assert_same_tensors(tensors(str(tmp / "hf")), tensors(str(tmp / "b2")))
    capsys.readouterr()
    assert main(["export", "--format", "hf-llava", "--lora", "peft", "--src", str(tmp / "base"), "--out",
                 str(tmp / "x"), "--no-progress"]) == 1
    assert "no LoRA adapters" in capsys.readouterr().err
