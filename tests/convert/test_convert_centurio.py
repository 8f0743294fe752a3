"""Centurio checkpoints as its training code writes them (timm SigLIP tower with fused qkv, the
multiscale-pool adapter, Qwen2): the original modules on random weights, saved with their own state_dict(),
import through the CLI to the same logits (float32, 1e-4), export back to identical tensors and config,
and the export loads into the original modules strictly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from convert.cli import main
from tests.helpers import centurio_model as cm
from tests.helpers.convert_models import IMAGE_TOKEN, assert_same_tensors, cli, tensors
from vlm_jax.checkpoint import load_model_checkpoint
from vlm_jax.data import images as img_lib
from vlm_jax.image_layout import image_layout
from vlm_jax.models.vlm import VLM

import jax
import jax.numpy as jnp


def crops(s: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (50, 61, 3), dtype=np.uint8))
    return img_lib.crops(img, "resize", cm.SIZE, (0.5,) * 3, f"{s}x{s}")


@pytest.mark.parametrize("multi_scale", [2, 3])
def test_centurio_training_checkpoint(tmp_path, monkeypatch, multi_scale):
    cm.register_tiny_tower(monkeypatch)
    model = cm.build(multi_scale)
    src = str(tmp_path / "centurio")
    cm.save(model, src)
    cli("import", "--format", "centurio", "--src", src, "--out", str(tmp_path / "ck"))

    params, cfg = load_model_checkpoint(str(tmp_path / "ck"))
    layout = image_layout(cfg)
    assert (cfg.projector.type, cfg.projector.multi_scale, layout.crops_per_image) == (
        "multiscale-pool", multi_scale, 1 + multi_scale**2)
    assert (cfg.vision.num_layers, cfg.vision.hidden_act, cfg.decoder.qkv_bias) == (3, "gelu", True)
    pix = crops(multi_scale)
    toks = np.asarray([[1, 5, 6] + [IMAGE_TOKEN] * layout.tokens_per_image + [7, 8, 9]], np.int32)
    ours = jax.jit(VLM(cfg).apply)({"params": jax.tree.map(jnp.asarray, params)},
                                   {"tokens": jnp.asarray(toks), "images": jnp.asarray(pix[None, None])})
    ref = cm.logits(model, toks, pix)
    assert np.abs(np.asarray(ours) - ref).max() < 1e-4

    out = str(tmp_path / "out")
    cli("export", "--format", "centurio", "--src", str(tmp_path / "ck"), "--out", out)
    assert_same_tensors(tensors(src), tensors(out))  # the fused qkv split and joined bit-exactly
    with open(os.path.join(src, "config.json")) as f, open(os.path.join(out, "config.json")) as g:
        assert json.load(f) == json.load(g)
    exported = {k: torch.from_numpy(v) for k, v in tensors(out).items()}
    back = cm.build(multi_scale, seed=1)
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        getattr(back, part).load_state_dict({k[len(part) + 1:]: v for k, v in exported.items()
                                             if k.startswith(part + ".")}, strict=True)
    np.testing.assert_array_equal(cm.logits(back, toks, pix), ref)


@pytest.mark.slow
def test_centurio_fresh_config_reimports(tmp_path, monkeypatch):
    """A CKPT without the source configs and kept-aside tensors (as training writes) exports a checkpoint
    Centurio's modules load strictly (unused tower parts filled) and that imports back to the same model."""
    cm.register_tiny_tower(monkeypatch)
    model = cm.build(2)
    cm.save(model, str(tmp_path / "src"))
    cli("import", "--format", "centurio", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "ck"))
    os.remove(tmp_path / "ck" / "conversion.json")
    os.remove(tmp_path / "ck" / "extra_tensors.safetensors")
    cli("export", "--format", "centurio", "--src", str(tmp_path / "ck"), "--out", str(tmp_path / "out"))
    exported = {k: torch.from_numpy(v) for k, v in tensors(str(tmp_path / "out")).items()}
    back = cm.build(2, seed=1)
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        getattr(back, part).load_state_dict({k[len(part) + 1:]: v for k, v in exported.items()
                                             if k.startswith(part + ".")}, strict=part != "language_model")
    pix = crops(2)
    toks = np.asarray([[1, 5] + [IMAGE_TOKEN] * 9 + [7]], np.int32)
    np.testing.assert_allclose(cm.logits(back, toks, pix), cm.logits(model, toks, pix), atol=1e-5, rtol=0)
    cli("import", "--format", "centurio", "--src", str(tmp_path / "out"), "--out", str(tmp_path / "ck2"))
    (p1, c1), (p2, c2) = load_model_checkpoint(str(tmp_path / "ck")), load_model_checkpoint(str(tmp_path / "ck2"))
    assert (c1.vision, c1.projector, c1.decoder, c1.image_token_id) == (c2.vision, c2.projector, c2.decoder,
                                                                         c2.image_token_id)
    jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_centurio_config_errors(tmp_path, monkeypatch, capsys):
    cm.register_tiny_tower(monkeypatch)
    model = cm.build(2)
    src = str(tmp_path / "c")
    cm.save(model, src)
    good = json.load(open(os.path.join(src, "config.json")))
    for edit, words in (({"adapter_type": "window-pool"}, "adapter_type 'window-pool'"),
                        ({"timm_model": "vit_huge_patch14_clip_224"}, "vit_huge_patch14_clip_224"),
                        ({"vision_feature_select_strategy": "default"}, "vision_feature_select_strategy")):
        with open(os.path.join(src, "config.json"), "w") as f:
            json.dump({**good, **edit}, f)
        assert main(["import", "--format", "centurio", "--src", src, "--out", str(tmp_path / "o"), "--no-progress"]) == 1
        assert words in capsys.readouterr().err
