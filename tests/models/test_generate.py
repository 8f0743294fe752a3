"""generate.py: greedy parity with HF generate, KV cache vs recomputation, sampling, stopping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.helpers.infer_tiny import IMAGE_ID, tiny
from vlm_jax import generate as gen
from vlm_jax.config import LoRAConfig
from vlm_jax.models.vlm import VLM

N = 4  # placeholders per 28x28 image with 14x14 patches


def _prompts():
    """Three rows: 1 image, none, 2 images; different lengths."""
    rng = np.random.default_rng(1)
    words = lambda n: list(rng.integers(3, IMAGE_ID, n))  # noqa: E731
    return [[1] + words(2) + [IMAGE_ID] * N + words(3), [1] + words(6), [1] + [IMAGE_ID] * N + words(1) + [IMAGE_ID] * N],  [1, 0, 2]


def _images(counts, size=28):
    rng = np.random.default_rng(2)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(sum(counts))]


def _batch(prompts, counts, imgs, side="left"):
    length = max(map(len, prompts))
    tokens = np.zeros((len(prompts), length), np.int32)
    mask = np.zeros((len(prompts), length), bool)
    images = np.zeros((len(prompts), max(counts), 1, 28, 28, 3), np.uint8)
    it = iter(imgs)
    for i, p in enumerate(prompts):
        sl = slice(length - len(p), length) if side == "left" else slice(0, len(p))
        tokens[i, sl], mask[i, sl] = p, True
        for j in range(counts[i]):
            images[i, j, 0] = next(it)
    return {"tokens": jnp.asarray(tokens), "prompt_mask": jnp.asarray(mask), "images": jnp.asarray(images)}


def _hf_generate(hf, prompts, imgs, max_new):
    length = max(map(len, prompts))
    ids = torch.tensor([[0] * (length - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    pix = torch.tensor(np.stack([(im / 255.0 - 0.5) / 0.5 for im in imgs]).transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=att, pixel_values=pix, max_new_tokens=max_new,
                          do_sample=False, eos_token_id=2, pad_token_id=0)
    return out[:, length:].numpy()


def _rows(state):
    toks, num = np.asarray(state.tokens), np.asarray(state.num_tokens)
    return [list(toks[i, : num[i]]) for i in range(len(num))]


# test_infer_sample checks all three through the CLI (left padding); here also right padding
@pytest.mark.parametrize("arch", [pytest.param("clip-llama", marks=pytest.mark.slow), "clip-llama3",
                                  pytest.param("siglip-qwen2", marks=pytest.mark.slow)])
def test_greedy_matches_hf_generate(arch):
    hf, cfg, params = tiny(arch)
    prompts, counts = _prompts()
    imgs = _images(counts)
    ref = _hf_generate(hf, prompts, imgs, max_new=10)
    sc = gen.SamplingConfig(max_new_tokens=10, eos_ids=(2,))
    for side in ("left", "right"):
        state = gen.generate(cfg, params, _batch(prompts, counts, imgs, side), sc)
        for row, r in zip(_rows(state), ref):
            assert row == list(r[: len(row)]), (side, row, list(r))
            assert len(row) == 10 or row[-1] == 2


def _with_lora(cfg, params, rank=2):
    """Random LoRA adapters on every decoder linear (merged before decoding, applied by the full forward)."""
    cfg = dataclasses.replace(cfg, lora=LoRAConfig(rank=rank, alpha=4.0))
    rng = np.random.default_rng(0)
    layers = {k: dict(v) for k, v in params["decoder"]["layers"].items()}
    for name in cfg.lora.target_modules:
        n, d_in, d_out = layers[name]["kernel"].shape
        layers[name]["lora_a"] = rng.normal(0, 0.1, (n, d_in, rank)).astype(np.float32)
        layers[name]["lora_b"] = rng.normal(0, 0.1, (n, rank, d_out)).astype(np.float32)
    return cfg, {**params, "decoder": {**params["decoder"], "layers": layers}}


def test_kv_cache_equals_recompute_and_layouts():
    _, cfg, params = tiny("clip-llama3")
    cfg, params = _with_lora(cfg, params)
    prompts, counts = _prompts()
    batch = _batch(prompts, counts, _images(counts), "right")
    sc = gen.SamplingConfig(max_new_tokens=6, return_logits=True)
    state = gen.generate(cfg, params, batch, sc)
    toks = np.asarray(state.tokens)
    mask = np.asarray(batch["prompt_mask"])
    length = mask.shape[1]
    full = np.concatenate([np.asarray(batch["tokens"]), toks], axis=1)
    seg = np.concatenate([mask, np.ones_like(toks, bool)], axis=1).astype(np.int32)
    pos = np.maximum(np.cumsum(seg, axis=1) - 1, 0)
    logits = jax.jit(VLM(cfg).apply)({"params": params}, {"tokens": jnp.asarray(full), "images": batch["images"],
                                                          "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(pos)})
    logits = np.asarray(logits)
    got = np.asarray(state.logits)
    for i in range(len(prompts)):
        last = np.flatnonzero(mask[i])[-1]
        want = np.concatenate([logits[i, last : last + 1], logits[i, length : length + 5]])
        np.testing.assert_allclose(got[i], want, atol=1e-4, rtol=0)
    # the layer-scan cache layout gives the same tokens
    scanned = gen.generate(cfg, params, batch, gen.SamplingConfig(max_new_tokens=6, unroll_layers=False))
    np.testing.assert_array_equal(np.asarray(scanned.tokens), toks)


def test_sampling_seeded_topk1_and_stops():
    _, cfg, params = tiny("siglip-qwen2")
    prompts, counts = _prompts()
    batch = _batch(prompts, counts, _images(counts))
    greedy = np.asarray(gen.generate(cfg, params, batch, gen.SamplingConfig(max_new_tokens=8)).tokens)
    sc = gen.SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(np.asarray(gen.generate(cfg, params, batch, sc, jax.random.key(5)).tokens), greedy)
    sc = gen.SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=1e-6)
    np.testing.assert_array_equal(np.asarray(gen.generate(cfg, params, batch, sc, jax.random.key(5)).tokens), greedy)

    hot = gen.SamplingConfig(max_new_tokens=8, temperature=30.0, top_k=50, top_p=0.95)
    a = np.asarray(gen.generate(cfg, params, batch, hot, jax.random.key(7)).tokens)
    b = np.asarray(gen.generate(cfg, params, batch, hot, jax.random.key(7), chunk=3).tokens)  # streamed in segments
    c = np.asarray(gen.generate(cfg, params, batch, hot, jax.random.key(8)).tokens)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    row = list(greedy[0])
    stop = gen.SamplingConfig(max_new_tokens=8, stop_sequences=(tuple(row[2:4]),), eos_ids=(int(greedy[1, 1]),))
    st = gen.generate(cfg, params, batch, stop)
    rows = _rows(st)
    assert rows[0] == row[: row.index(row[3]) + 1] or rows[0][-2:] == row[2:4]
    assert rows[1][-1] == greedy[1, 1] and len(rows[1]) <= 2
    assert (np.asarray(st.tokens)[1, len(rows[1]):] == 0).all()


def test_per_row_keys_and_knobs_do_not_depend_on_the_other_rows():
    """A server batches unrelated requests: with a key and knobs per row, a row samples what it
    samples alone; temperature-0 rows of a sampled batch are greedy; on_tokens can stop a row."""
    _, cfg, params = tiny("siglip-qwen2")
    prompts, counts = _prompts()
    imgs = _images(counts)
    batch = _batch(prompts, counts, imgs)
    greedy = np.asarray(gen.generate(cfg, params, batch, gen.SamplingConfig(max_new_tokens=8)).tokens)
    hot = gen.SamplingConfig(max_new_tokens=8, temperature=1.0)
    keys = jax.vmap(jax.random.key)(jnp.asarray([11, 12, 13], jnp.uint32))
    knobs = gen.row_knobs([30.0, 0.0, 5.0], [0, 0, 50], [0.95, 1.0, 1.0])
    together = np.asarray(gen.generate(cfg, params, batch, hot, keys, knobs=knobs).tokens)
    np.testing.assert_array_equal(together[1], greedy[1])
    assert not np.array_equal(together[0], greedy[0])
    for i in (0, 2):  # the same row alone, with its own key and knobs
        alone = {name: v[i : i + 1] for name, v in batch.items()}
        k = {name: v[i : i + 1] for name, v in knobs.items()}
        got = np.asarray(gen.generate(cfg, params, alone, hot, keys[i : i + 1], knobs=k).tokens)
        np.testing.assert_array_equal(got[0], together[i])

    seen = []

    def stop_row_0_after_prefill(state):
        seen.append(int(np.asarray(state.num_tokens)[0]))
        return np.asarray([True, False, False])

    st = gen.generate(cfg, params, batch, gen.SamplingConfig(max_new_tokens=8), chunk=3, on_tokens=stop_row_0_after_prefill)
    assert _rows(st)[0] == [greedy[0, 0]] and _rows(st)[1] == list(greedy[1][: len(_rows(st)[1])])
    assert len(_rows(st)[1]) == 8 and seen[0] == 1


@pytest.mark.parametrize("impl", ["splash", "flash_gpu"])
def test_fused_attention_prefill_matches_reference(impl):
    """Prefill (decoder and vision tower) through a Pallas kernel in interpret mode, left padding:
    the same greedy tokens and logits as the reference einsum."""
    _, cfg, params = tiny("clip-llama3")
    prompts, counts = _prompts()
    batch = _batch(prompts, counts, _images(counts), "left")
    sc = gen.SamplingConfig(max_new_tokens=4, return_logits=True)
    ref = gen.generate(cfg, params, batch, sc)
    got = gen.generate(dataclasses.replace(cfg, attention=impl), params, batch, sc)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(got.logits), np.asarray(ref.logits), atol=1e-4, rtol=0)
