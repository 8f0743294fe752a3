"""The fused Pallas kernels (TPU splash, GPU flash), run in interpret mode, against the reference einsum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.config import AttentionBlocks
from vlm_jax.models.attention import resolve_impl, self_attention

KERNELS = ["splash", "flash_gpu"]
SMALL = AttentionBlocks(q=128, kv=128, q_bwd=128, kv_bwd=128)  # several blocks per row at L=300


def packed(length=300, heads=4, kv_heads=2, hd=32, dtype=jnp.float32, seed=0):
    """Two rows: three examples then padding (segment 0), and one example filling the row."""
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(2, length, h, hd)), dtype) for h in (heads, kv_heads, kv_heads))
    seg = np.zeros((2, length), np.int32)
    seg[0, :70], seg[0, 70:200], seg[0, 200:260] = 1, 2, 3
    seg[1, :] = 1
    return q, k, v, jnp.asarray(seg)


def outputs_and_grads(impl, q, k, v, seg, causal=True):
    probe = jax.random.normal(jax.random.key(1), q.shape, jnp.float32)  # a loss that weighs every output

    def loss(q, k, v):
        out = self_attention(q, k, v, seg, causal=causal, impl=impl, blocks=SMALL)
        return (out.astype(jnp.float32) * probe).sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return [np.asarray(x, np.float32) for x in (out, *grads)]


@pytest.mark.parametrize("impl", KERNELS)
def test_kernel_equals_reference_float32(impl):
    q, k, v, seg = packed()
    ref = outputs_and_grads("xla", q, k, v, seg)
    got = outputs_and_grads(impl, q, k, v, seg)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        err = np.abs(a - b).max()
        assert err <= 1e-5, (name, err)


@pytest.mark.parametrize("impl", KERNELS)
def test_kernel_equals_reference_bfloat16(impl):
    q, k, v, seg = packed(dtype=jnp.bfloat16, seed=2)
    ref = outputs_and_grads("xla", q, k, v, seg)
    got = outputs_and_grads(impl, q, k, v, seg)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        rel = np.abs(a - b).max() / np.abs(b).max()
        assert rel <= 2e-2, (name, rel)


@pytest.mark.parametrize("impl", KERNELS)
def test_unmasked_kernel_equals_reference(impl):
    """The vision tower's case: every position sees every other (L = 50, less than one block)."""
    q, k, v, _ = packed(length=50, heads=2, kv_heads=2, seed=3)
    seg = jnp.ones((2, 50), jnp.int32)
    ref = outputs_and_grads("xla", q, k, v, seg, causal=False)
    got = outputs_and_grads(impl, q, k, v, seg, causal=False)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert np.abs(a - b).max() <= 1e-5, name


def test_auto_is_blocked_on_cpu():
    assert resolve_impl("auto") == "blocked"
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        resolve_impl("flash")


def _tiny_vlm_loss_and_grads(attention: str):
    """Loss and gradients of a tiny VLM (vision tower + decoder) on packed rows with images, traced
    on a 2 x 2 (data x tensor) mesh with the training rules, so the kernels run under shard_map."""
    import dataclasses

    from tests.helpers.train_standin import tiny_config
    from train import data as data_lib, step as step_lib
    from vlm_jax import losses, sharding
    from vlm_jax.config import MeshConfig
    from vlm_jax.models.vlm import VLM

    cfg = tiny_config()
    cfg.model.decoder.num_layers = cfg.model.vision.num_layers = 1
    cfg.train.fake_data.seq_len, cfg.train.fake_data.segments_per_row = 150, 3
    cfg.mesh = MeshConfig(data=2, fsdp=1, tensor=2)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:4])
    batch = sharding.global_batch(next(data_lib.make_loader(cfg, "train", 4, 0, 4, 0, 1)), mesh, 4)
    model = VLM(dataclasses.replace(cfg.model, attention=attention, attention_blocks=SMALL))
    params = model.init_params(jax.random.key(0))

    def loss(p, b):
        logits = model.apply({"params": p}, {k: b[k] for k in step_lib.MODEL_KEYS})
        s = losses.cross_entropy_sums(logits, b["targets"], b["loss_mask"].astype(bool))
        return s.nll / s.count

    lowered = jax.jit(step_lib.with_activation_rules(jax.value_and_grad(loss), mesh, sharding.logical_rules(cfg.mesh))
                      ).lower(params, batch)
    value, grads = lowered.compile()(params, batch)
    return float(value), jax.tree.map(np.asarray, grads), lowered.as_text()


@pytest.fixture(scope="module")
def tiny_vlm_reference():
    return _tiny_vlm_loss_and_grads("xla")


@pytest.mark.parametrize("impl", ["blocked", "dot_product"] + KERNELS)
def test_tiny_vlm_step_matches_reference(impl, tiny_vlm_reference):
    ref_loss, ref_grads, _ = tiny_vlm_reference
    loss, grads, hlo = _tiny_vlm_loss_and_grads(impl)
    assert abs(loss - ref_loss) <= 1e-5
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
        assert np.abs(a - b).max() <= 1e-5, jax.tree_util.keystr(path)
    if impl in KERNELS:
        assert hlo.count("sdy.manual_computation") + hlo.count("shard_map") > 0  # the kernels ran per shard
