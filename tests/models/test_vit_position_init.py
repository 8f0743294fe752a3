"""The vision tower's position-embedding init options: HF's normal init by default, or big_vision's
2-D sin-cos table (checked against big_vision's own function) at a chosen scale."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.big_vision_posemb import posemb_sincos_2d
from vlm_jax.config import VisionConfig
from vlm_jax.models import vit


def tower_cfg(**kw):
    base = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    return VisionConfig(**{**base, **kw})


def position_embedding(cfg, seed=0):
    params = vit.VisionTower(cfg).init(jax.random.key(seed), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))
    return np.asarray(nn.unbox(params)["params"]["position_embedding"])


@pytest.mark.parametrize("grid,width", [(4, 16), (3, 96), (7, 8)])
def test_sincos_table_equals_big_vision(grid, width):
    ours = vit.sincos_2d(grid, width)
    theirs = np.asarray(posemb_sincos_2d(grid, grid, width, dtype=jnp.float64 if jax.config.x64_enabled else jnp.float32))[0]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert ours.shape == (grid * grid, width)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_sincos_init_scales_the_table_and_zeros_the_class_token(kind):
    cfg = tower_cfg(kind=kind, position_init="sincos2d", position_init_scale=3.0)
    pe = position_embedding(cfg)
    table = 3.0 * vit.sincos_2d(4, 16)
    if kind == "clip":  # the class token comes first and gets no position (MAE)
        np.testing.assert_array_equal(pe[0], 0.0)
        pe = pe[1:]
    np.testing.assert_allclose(pe, table, rtol=1e-6, atol=1e-6)
    assert np.array_equal(pe, position_embedding(cfg, seed=1)[-16:])  # fixed: independent of the seed


def test_default_init_is_hf_normal_and_scale_multiplies_its_std():
    default = position_embedding(tower_cfg())
    scaled = position_embedding(tower_cfg(position_init_scale=50.0))
    np.testing.assert_allclose(scaled, 50.0 * default, rtol=1e-5)  # the same draw, 50x the std
    assert 0.01 < default.std() < 0.03  # HF initializer_range 0.02


def test_unknown_position_init_names_the_key():
    with pytest.raises(ValueError, match="vision.position_init"):
        position_embedding(tower_cfg(position_init="rope"))
    with pytest.raises(ValueError, match="multiple of 4"):
        position_embedding(tower_cfg(position_init="sincos2d", hidden_size=18, num_heads=2))
