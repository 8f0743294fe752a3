import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models.attention import attention, rope_inv_freq, segment_causal_mask


def packed_inputs(length=300, heads=4, kv_heads=2, hd=8, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(2, length, heads, hd)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, length, kv_heads, hd)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, length, kv_heads, hd)), jnp.float32)
    seg = np.zeros((2, length), np.int32)
    seg[0, :90], seg[0, 90:250] = 1, 2  # two examples then padding
    seg[1, :] = 1
    idx = jnp.broadcast_to(jnp.arange(length)[None], (2, length))
    mask = segment_causal_mask(jnp.asarray(seg), jnp.asarray(seg), idx, idx)
    return q, k, v, mask


@pytest.mark.parametrize("impl", ["dot_product", "blocked"])
def test_faster_paths_match_the_reference(impl):
    q, k, v, mask = packed_inputs()
    ref = attention(q, k, v, mask, impl="xla")
    out = attention(q, k, v, mask, impl=impl)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)
    g_ref = jax.grad(lambda q: attention(q, k, v, mask, impl="xla").sum())(q)
    g = jax.grad(lambda q: attention(q, k, v, mask, impl=impl).sum())(q)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-5, rtol=0)


def test_attention_never_crosses_segments():
    q, k, v, mask = packed_inputs()
    out = attention(q, k, v, mask)
    v2 = v.at[0, 90:].set(123.0)  # change everything after the first example
    out2 = attention(q, k, v2, mask)
    np.testing.assert_array_equal(np.asarray(out[0, :90]), np.asarray(out2[0, :90]))


def test_rope_scaling_types():
    base = rope_inv_freq(16, 10000.0, None)
    np.testing.assert_allclose(rope_inv_freq(16, 10000.0, {"rope_type": "linear", "factor": 4.0}), base / 4, rtol=1e-7)
    with pytest.raises(ValueError, match="unsupported rope_scaling type 'yarn'"):
        rope_inv_freq(16, 10000.0, {"rope_type": "yarn", "factor": 4.0})
