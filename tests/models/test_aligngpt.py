"""AlignGPT: our indicators + gate vs the transcribed PyTorch reference (tests/helpers/aligngpt_reference.py)
on random weights; packed vs unpacked; text-only samples get no indicator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from convert import hf_configs, mapping
from tests.helpers.aligngpt_reference import IGNORE_INDEX, AlignGPTReference, AlignIndicator, GatedWeightLayer
from tests.helpers.params import random_params
from vlm_jax import losses
from vlm_jax.config import AlignGPTConfig, DecoderConfig, ModelConfig, VisionConfig
from vlm_jax.data import aligngpt as data_align
from vlm_jax.data.examples import IMAGE_MARKER, expand_images
from vlm_jax.data.packing import assemble_row
from vlm_jax.image_layout import image_layout
from vlm_jax.models.vlm import VLM

TOL = 1e-4
IMG = 16


def tiny_config() -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(image_size=IMG, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=2),
        decoder=DecoderConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4),
        aligngpt=AlignGPTConfig(enabled=True))


# (template ids with one IMAGE_MARKER or none, label mask, similarity level)
SAMPLES = [
    ([1, IMAGE_MARKER, 20, 21, 22, 30, 31, 2], [0, 0, 0, 0, 0, 1, 1, 1], 3),
    ([1, 40, IMAGE_MARKER, 41, 42, 43, 44, 45, 50, 51, 52, 2], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], 6),
    ([1, 60, 61, 62, 70, 71, 2], [0, 0, 0, 0, 1, 1, 1], None),  # text-only
]


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    model = VLM(cfg)
    params = random_params(model, 0, 0.05)
    rng = np.random.default_rng(0)
    gate = params["gated_weight_layer"]  # random biases too (init is zeros)
    for k in ("mlp_0", "mlp_2"):
        gate[k]["bias"] = jnp.asarray(rng.normal(0, 0.5, gate[k]["bias"].shape), jnp.float32)
        gate[k]["kernel"] = jnp.asarray(rng.normal(0, 0.5, gate[k]["kernel"].shape), jnp.float32)
    params["decoder"]["embed_tokens"]["embedding"] = jnp.asarray(rng.normal(0, 1.0, (128, 64)), jnp.float32)
    pixels = rng.integers(0, 256, (len(SAMPLES), 1, IMG, IMG, 3), dtype=np.uint8)
    return cfg, model, params, pixels


def torch_reference(cfg, params, stage):
    d = cfg.decoder
    lm = LlamaForCausalLM(hf_configs.decoder_to_hf(d)).eval()
    sd = {}
    for e in mapping.decoder_entries(cfg):
        t = mapping.to_hf(e, np.asarray(mapping.get_leaf(params, e.path)))
        sd[e.key.replace("lm.", "model.", 1) if e.key.startswith("lm.") else e.key] = torch.from_numpy(t.copy())
    lm.load_state_dict(sd, strict=True)
    n = image_layout(cfg).tokens_per_image
    ind, gate = AlignIndicator(d.hidden_size), GatedWeightLayer(n)
    ind.indicator_embs.data = torch.from_numpy(np.asarray(params["align_indicators"]["indicator_embs"]).copy())
    g = params["gated_weight_layer"]
    for i, k in ((0, "mlp_0"), (2, "mlp_2")):
        gate.mlp[i].weight.data = torch.from_numpy(np.asarray(g[k]["kernel"]).T.copy())
        gate.mlp[i].bias.data = torch.from_numpy(np.asarray(g[k]["bias"]).copy())
    return AlignGPTReference(lm, ind, gate, stage)


def examples(cfg, samples, pixels, pretrain: bool):
    out = []
    for (ids, mask, sim), px in zip(samples, pixels):
        t, m = np.asarray(ids, np.int64), np.asarray(mask, bool)
        has_image = IMAGE_MARKER in ids
        level = data_align.example_level({"similarity": sim}, has_image, "similarity" if pretrain else "", 8)
        t, m = data_align.insert_indicator(t, m, level, cfg.aligngpt.indicator_token_id)
        t, m, _ = expand_images(t, m, image_layout(cfg).tokens_per_image, cfg.image_token_id)
        images = px[None] if has_image else np.zeros((0, *px.shape), np.uint8)
        out.append({"tokens": t.astype(np.int32), "label_mask": m, "images": images, "align_level": level})
    return out


def rows(exs, packed, num_rows=3, seq_len=64, max_images=2):
    """One example per row, or all in row 0; always num_rows rows (one compiled shape)."""
    shape = (1, IMG, IMG, 3)
    groups = [exs] if packed else [[e] for e in exs]
    rs = [assemble_row(g, seq_len, max_images, shape) for g in groups]
    rs += [{k: np.zeros_like(v) for k, v in rs[0].items()}] * (num_rows - len(rs))
    return {k: np.stack([r[k] for r in rs]) for k in rs[0]}


@jax.jit
def _logits(params, inputs):
    return VLM(tiny_config()).apply({"params": params}, inputs)


def run(model, params, batch):
    inputs = {k: jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions", "images", "image_mask",
                                                   "align_level") if k in batch}
    logits = _logits(params, inputs)
    sums = losses.cross_entropy_sums(logits, jnp.asarray(batch["targets"]), jnp.asarray(batch["loss_mask"]))
    return np.asarray(logits), float(sums.nll / sums.count)


def reference_outputs(ref, model, params, samples, pixels, pretrain):
    ids = [torch.tensor(s[0]) for s in samples]
    labels = [torch.tensor([t if m else IGNORE_INDEX for t, m in zip(s[0], s[1])]) for s in samples]
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=0)
    label_t = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
    feats = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method=VLM.encode_images))(
        params, jnp.asarray(pixels[:, :, None])))
    image_features = [torch.from_numpy(f.copy()) for f in feats]
    align_ids = torch.tensor([s[2] for s in samples]) if pretrain else None
    with torch.no_grad():
        loss, logits, mask = ref.forward(input_ids, input_ids.ne(0), label_t, image_features, align_ids)
    order = [i for i, s in enumerate(samples) if IMAGE_MARKER in s[0]] + [
        i for i, s in enumerate(samples) if IMAGE_MARKER not in s[0]]
    per_sample = {i: logits[j][mask[j]].numpy() for j, i in enumerate(order)}
    return float(loss), per_sample


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_matches_torch_reference_packed_and_unpacked(setup, stage):
    cfg, model, params, pixels = setup
    pretrain = stage == "pretrain"
    samples = SAMPLES[:2] if pretrain else SAMPLES  # their pretraining drops text-only samples
    pix = pixels[:len(samples)]
    ref_loss, ref_logits = reference_outputs(torch_reference(cfg, params, stage), model, params, samples, pix, pretrain)

    exs = examples(cfg, samples, pix, pretrain)
    unpacked, packed = rows(exs, packed=False), rows(exs, packed=True)
    lu, loss_u = run(model, params, unpacked)
    lp, loss_p = run(model, params, packed)
    assert abs(loss_u - ref_loss) < TOL and abs(loss_p - ref_loss) < TOL, (loss_u, loss_p, ref_loss)
    for i, ex in enumerate(exs):
        n = len(ex["tokens"])
        ref = ref_logits[i]
        assert ref.shape[0] == n  # the reference inserted an indicator exactly when we did
        np.testing.assert_allclose(lu[i, :n], ref, atol=TOL, rtol=0)
        seg = packed["segment_ids"][0] == i + 1
        np.testing.assert_allclose(lp[0, seg], ref, atol=TOL, rtol=0)
    assert np.abs(lu).max() > 0.1


def test_text_only_samples_get_no_indicator(setup):
    cfg, model, params, pixels = setup
    exs = examples(cfg, SAMPLES, pixels, pretrain=False)
    assert [e["align_level"] for e in exs] == [8, 8, -1]
    assert cfg.aligngpt.indicator_token_id not in exs[2]["tokens"]
    batch = rows(exs, packed=True)
    text_seg = batch["segment_ids"][0] == 3
    assert (batch["align_level"][0, text_seg] == -1).all()
    where = np.flatnonzero(batch["align_level"][0] >= 0)
    starts = [np.flatnonzero(batch["segment_ids"][0] == s)[0] for s in (1, 2)]
    assert where.tolist() == [s + 1 for s in starts]
    # the text-only segment's logits do not depend on the indicator parameters
    other = jax.tree.map(lambda x: x, params)
    other["align_indicators"] = {"indicator_embs": params["align_indicators"]["indicator_embs"] + 1.0}
    a, _ = run(model, params, batch)
    b, _ = run(model, other, batch)
    np.testing.assert_array_equal(a[0, text_seg], b[0, text_seg])
    image_segs = ~text_seg & (batch["segment_ids"][0] > 0)
    assert np.abs(a[0, image_segs] - b[0, image_segs]).max() > 1e-3


def test_gate_level_is_derived_from_tokens_without_the_key(setup):
    """Inference passes no `align_level`: the indicator placeholder in the tokens means "gate"."""
    cfg, model, params, pixels = setup
    batch = rows(examples(cfg, SAMPLES, pixels, pretrain=False), packed=True)
    with_key, _ = run(model, params, batch)
    without, _ = run(model, params, {k: v for k, v in batch.items() if k != "align_level"})
    np.testing.assert_array_equal(with_key, without)


@pytest.mark.slow
def test_generate_on_left_padded_prompts_matches_the_training_forward(setup):
    """Inference: the prompt carries the indicator placeholder (no `align_level`); padding is not text."""
    from vlm_jax.generate import SamplingConfig, generate

    cfg, model, params, pixels = setup
    exs = examples(cfg, SAMPLES, pixels, pretrain=False)
    lu, _ = run(model, params, rows(exs, packed=False))
    length = max(len(e["tokens"]) for e in exs) + 3
    tokens = np.zeros((len(exs), length), np.int32)
    mask = np.zeros((len(exs), length), bool)
    images = np.zeros((len(exs), 1, 1, IMG, IMG, 3), np.uint8)
    for i, e in enumerate(exs):
        tokens[i, length - len(e["tokens"]):], mask[i, length - len(e["tokens"]):] = e["tokens"], True
        images[i, :len(e["images"])] = e["images"]
    state = generate(cfg, params, {"tokens": jnp.asarray(tokens), "prompt_mask": jnp.asarray(mask),
                                   "images": jnp.asarray(images)}, SamplingConfig(max_new_tokens=1, return_logits=True))
    first = np.asarray(state.logits[:, 0])
    for i, e in enumerate(exs):
        np.testing.assert_allclose(first[i], lu[i, len(e["tokens"]) - 1], atol=TOL, rtol=0)
