"""Our model vs transformers PyTorch LLaVA (imported with the converter CLI); packed vs unpacked;
sharded vs single device."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.convert_models import (
    IMAGE_TOKEN,
    ckpt_logits,
    cli,
    hf_logits,
    images,
    make_hf_llava,
    prompt,
    save_original,
    save_vision_folder,
    tokens_per_image,
)
from tests.helpers.params import random_params
from vlm_jax import sharding
from vlm_jax.config import DecoderConfig, MeshConfig, ModelConfig, VisionConfig
from vlm_jax.image_layout import image_layout
from vlm_jax.models.vlm import VLM

TOL = 1e-4

CASES = {  # id: (vision, text, vision_feature_layer, select strategy)
    "clip-llama-mha-sel2-patch": ("clip", "llama", -2, "default"),
    "clip-llama3-gqa-sel1-clspatch": ("clip", "llama3", -1, "full"),
    "siglip-qwen2-sel2": ("siglip", "qwen2", -2, "full"),
    "clip-llama-sel1-patch": ("clip", "llama", -1, "default"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hf_llava_parity(tmp_path, case):
    vision, text, layer, strategy = CASES[case]
    hf = make_hf_llava(str(tmp_path / "hf"), vision, text, layer, strategy)
    cli("import", "--format", "hf-llava", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"))
    n = tokens_per_image(hf)
    for n_images in ((1, 2) if case == "clip-llama-mha-sel2-patch" else (2,)):  # prompts with one and two images
        toks, imgs = prompt(n, n_images), images(n_images, seed=n_images)
        ours, cfg = ckpt_logits(str(tmp_path / "ckpt"), toks, imgs)
        assert image_layout(cfg).tokens_per_image == n
        ref = hf_logits(hf, toks, imgs, cfg.vision.image_mean, cfg.vision.image_std)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < TOL, (case, n_images, np.abs(ours - ref).max())
        assert np.abs(ref).max() > 0.1  # not vacuous


@pytest.mark.parametrize("weights,with_tower", [("bin", False), ("safetensors", True)])
def test_original_llava_equals_hf_llava(tmp_path, weights, with_tower):
    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama3", -2, "default")
    save_original(hf, str(tmp_path / "orig"), weights, with_tower)
    save_vision_folder(hf, str(tmp_path / "clip"))
    cli("import", "--format", "hf-llava", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "a"))
    cli("import", "--format", "llava", "--src", str(tmp_path / "orig"), "--vision", str(tmp_path / "clip"),
        "--out", str(tmp_path / "b"))
    n = tokens_per_image(hf)
    toks, imgs = prompt(n, 2), images(2)
    a, cfg_a = ckpt_logits(str(tmp_path / "a"), toks, imgs)
    b, cfg_b = ckpt_logits(str(tmp_path / "b"), np.where(toks == IMAGE_TOKEN, -200, toks), imgs)
    assert cfg_b.image_token_id == -200 and cfg_a.image_token_id == IMAGE_TOKEN
    assert (cfg_a.vision, cfg_a.decoder, cfg_a.projector) == (cfg_b.vision, cfg_b.decoder, cfg_b.projector)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- model properties


def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4),
        decoder=DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                              num_kv_heads=2, max_position_embeddings=256),
        image_token_id=127, **kw)


def example(rng, n_img_tokens: int, text_len: int) -> np.ndarray:
    return np.concatenate([[1], [127] * n_img_tokens, rng.integers(3, 120, text_len)]).astype(np.int32)


def test_packed_equals_unpacked():
    cfg = tiny_cfg()
    model = VLM(cfg)
    params = random_params(model, 1)
    n = image_layout(cfg).tokens_per_image
    rng = np.random.default_rng(0)
    ex = [example(rng, n, 5), example(rng, n, 9)]
    imgs = images(2, seed=3)
    apply = jax.jit(model.apply)
    # alone: one example per row (right-padded; causal attention never sees the padding)
    width = max(len(e) for e in ex)
    rows = np.stack([np.pad(e, (0, width - len(e))) for e in ex])
    single = {"tokens": rows, "segment_ids": (np.arange(width)[None] < np.array([[len(e)] for e in ex])).astype(np.int32),
              "images": imgs[:, None, None]}
    out = np.asarray(apply({"params": params}, single))
    alone = [out[i, : len(e)] for i, e in enumerate(ex)]
    pad = 3
    tokens = np.concatenate(ex + [np.zeros(pad, np.int32)])[None]
    seg = np.concatenate([np.full(len(ex[0]), 1), np.full(len(ex[1]), 2), np.zeros(pad)]).astype(np.int32)[None]
    pos = np.concatenate([np.arange(len(ex[0])), np.arange(len(ex[1])), np.zeros(pad)]).astype(np.int32)[None]
    batch = {"tokens": tokens, "segment_ids": seg, "positions": pos, "images": imgs[None, :, None],
             "image_mask": np.ones((1, 2), bool)}
    packed = np.asarray(apply({"params": params}, batch))[0]
    np.testing.assert_allclose(packed[: len(ex[0])], alone[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[len(ex[0]): len(ex[0]) + len(ex[1])], alone[1], atol=1e-5, rtol=0)


def test_unrolled_equals_scanned():
    """scan_layers=false (the demo's choice on CPU) computes what the scanned stack does, forward and
    backward, with the per-layer params `layers_{i}` sliced from the stacked `layers`."""
    scanned, unrolled = VLM(tiny_cfg()), VLM(tiny_cfg(scan_layers=False))
    params = random_params(scanned, 4)
    dec = dict(params["decoder"])
    stacked = dec.pop("layers")
    for i in range(scanned.cfg.decoder.num_layers):
        dec[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    params_unrolled = {**params, "decoder": dec}
    assert jax.tree.structure(params_unrolled) == jax.tree.structure(random_params(unrolled, 4))
    n = image_layout(scanned.cfg).tokens_per_image
    rng = np.random.default_rng(2)
    tokens = np.stack([example(rng, n, 7) for _ in range(2)])
    batch = {"tokens": tokens, "images": images(2, seed=6)[:, None, None], "image_mask": np.ones((2, 1), bool),
             "segment_ids": np.ones_like(tokens), "positions": np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)}

    def loss(model):
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(jax.nn.logsumexp(model.apply({"params": p}, batch), -1))))

    (l_scan, g_scan), (l_unroll, g_unroll) = loss(scanned)(params), loss(unrolled)(params_unrolled)
    np.testing.assert_allclose(float(l_unroll), float(l_scan), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(unrolled.apply({"params": params_unrolled}, batch)),
                               np.asarray(scanned.apply({"params": params}, batch)), atol=1e-5, rtol=0)
    g_layers = g_scan["decoder"]["layers"]
    for i in range(scanned.cfg.decoder.num_layers):
        for a, b in zip(jax.tree.leaves(g_unroll["decoder"][f"layers_{i}"]), jax.tree.leaves(g_layers)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[i], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_unroll["decoder"]["embed_tokens"]["embedding"]),
                               np.asarray(g_scan["decoder"]["embed_tokens"]["embedding"]), atol=1e-6, rtol=1e-5)


def test_sharded_equals_single_device():
    assert jax.device_count() >= 8, "tests/conftest.py should configure 8 CPU devices"
    cfg = tiny_cfg()
    model = VLM(cfg)
    params = random_params(model, 2)
    n = image_layout(cfg).tokens_per_image
    rng = np.random.default_rng(1)
    tokens = np.stack([np.concatenate([example(rng, n, 6), np.zeros(1, np.int32)]) for _ in range(4)])
    batch = {"tokens": tokens, "images": images(4, seed=5)[:, None, None], "image_mask": np.ones((4, 1), bool),
             "segment_ids": (tokens != 0).astype(np.int32),
             "positions": np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape).astype(np.int32)}
    single = np.asarray(jax.jit(model.apply)({"params": params}, batch))

    mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:8])
    rules = sharding.logical_rules(mesh_cfg)
    boxed = jax.eval_shape(model.init_boxed, jax.random.key(0))
    _, param_sh = sharding.param_shardings(boxed, mesh, rules)
    assert any(len(s.spec) and any(a is not None for a in s.spec) for s in jax.tree.leaves(param_sh))
    sharded_params = jax.device_put(params, param_sh)
    batch_sh = {k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}
    sharded_batch = jax.device_put(batch, batch_sh)

    def fwd(p, b):
        with nn.logical_axis_rules(rules):
            return model.apply({"params": p}, b)

    with jax.set_mesh(mesh):
        out = jax.jit(fwd, in_shardings=(param_sh, batch_sh))(sharded_params, sharded_batch)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=0)
