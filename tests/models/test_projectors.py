"""Projectors against PyTorch implementations of the published structures (MobileVLM LDP, VILA
mlp_downsample, Centurio multiscale-pool), on random weights, float32."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.helpers.torch_projectors import TorchDownsample, TorchLDP, TorchMultiscalePool
from vlm_jax.config import DecoderConfig, ModelConfig, ProjectorConfig, VisionConfig
from vlm_jax.image_layout import image_layout
from vlm_jax.models import projectors

# ---------------------------------------------------------------- weight copies


def lin(m):
    return {"kernel": m.weight.detach().numpy().T, "bias": m.bias.detach().numpy()}


def ln(m):
    return {"scale": m.weight.detach().numpy(), "bias": m.bias.detach().numpy()}


def ldp_params(t: TorchLDP):
    def block(ir):
        dw, se, pw = ir.block
        return {
            "dw_conv": {"kernel": dw[0].weight.detach().numpy().transpose(2, 3, 1, 0)},
            "dw_norm": ln(dw[1]),
            "se_fc1": {"kernel": se.fc1.weight.detach().numpy()[:, :, 0, 0].T, "bias": se.fc1.bias.detach().numpy()},
            "se_fc2": {"kernel": se.fc2.weight.detach().numpy()[:, :, 0, 0].T, "bias": se.fc2.bias.detach().numpy()},
            "project": {"kernel": pw[0].weight.detach().numpy()[:, :, 0, 0].T},
            "project_norm": ln(pw[1]),
        }

    return {"linear_1": lin(t.mlp[1]), "linear_2": lin(t.mlp[3]), "block_1": block(t.mb_block[1]), "block_2": block(t.mb_block[2])}


def model_cfg(ptype, grid, vis=16, dim=32):
    return ModelConfig(
        vision=VisionConfig(kind="siglip", image_size=grid * 2, patch_size=2, hidden_size=vis),
        projector=ProjectorConfig(type=ptype),
        decoder=DecoderConfig(hidden_size=dim),
    )


def run_ours(cfg, params, feats):
    module = projectors.build_projector(cfg, jnp.float32, jnp.float32)
    return np.asarray(module.apply({"params": params}, jnp.asarray(feats)))


def assert_matches(cfg, ref, params, seed):
    """Ours with `params` (copied from the PyTorch `ref`) on random single-crop features, within 1e-4."""
    feats = np.random.default_rng(seed).normal(size=(2, cfg.vision.num_feature_tokens, 16)).astype(np.float32)
    expected = ref(torch.tensor(feats)).detach().numpy()
    out = run_ours(cfg, params, feats[:, None])
    assert out.shape == expected.shape == (2, image_layout(cfg).tokens_per_image, 32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    return out


def randomize(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module.eval()


@pytest.mark.parametrize("grid", [24, 5])
def test_ldpnet_matches_mobilevlm(grid):
    cfg = model_cfg("ldpnet", grid)
    ref = randomize(TorchLDP(16, 32))
    out = assert_matches(cfg, ref, ldp_params(ref), seed=0)
    if grid == 24:
        assert out.shape[1] == 144


@pytest.mark.parametrize("grid", [4, 5])
def test_mlp_downsample_matches_vila(grid):
    cfg = model_cfg("mlp_downsample", grid)
    ref = randomize(TorchDownsample(16, 32))
    params = {"norm": ln(ref.layers[1]), "linear_1": lin(ref.layers[2]), "linear_2": lin(ref.layers[4])}
    assert_matches(cfg, ref, params, seed=1)


def test_multiscale_pool_matches_centurio():
    cfg = model_cfg("multiscale-pool", 3)
    assert image_layout(cfg).crops_per_image == 5
    ref = randomize(TorchMultiscalePool(16, 32))
    feats = np.random.default_rng(2).normal(size=(2, 5, 9, 16)).astype(np.float32)
    expected = ref(torch.tensor(feats.reshape(10, 9, 16))).detach().numpy()
    out = run_ours(cfg, {"linear_1": lin(ref.linear_1), "linear_2": lin(ref.linear_2)}, feats)
    assert out.shape == expected.shape == (2, 9, 32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_registry_names_and_errors():
    for name in ["linear", "identity", "mlp2x_gelu", "mlp3x_gelu", "ldpnet", "mlp_downsample", "multiscale-pool"]:
        projectors.get_builder(name)
    with pytest.raises(ValueError, match="unknown projector type 'mlpx_gelu'"):
        projectors.get_builder("mlpx_gelu")


def test_mlp3x_gelu_depth():
    cfg = model_cfg("mlp3x_gelu", 2)
    module = projectors.build_projector(cfg, jnp.float32, jnp.float32)
    params = module.init(jax.random.key(0), jnp.zeros((1, 1, 4, 16)))["params"]
    assert sorted(params) == ["linear_1", "linear_2", "linear_3"]


@pytest.mark.parametrize("ptype", ["linear", "identity", "mlp2x_gelu", "mlp3x_gelu", "ldpnet", "mlp_downsample",
                                   "multiscale-pool"])
@pytest.mark.parametrize("grid", [4, 5])
def test_every_projector_takes_and_gives_the_image_layout(ptype, grid):
    """The data lays out image_layout's K crops and N placeholders; each projector must map exactly that."""
    cfg = model_cfg(ptype, grid, vis=16, dim=16 if ptype == "identity" else 32)
    cfg.projector.multi_scale = 3
    layout = image_layout(cfg)
    module = projectors.build_projector(cfg, jnp.float32, jnp.float32)
    feats = jnp.zeros((2, layout.crops_per_image, grid * grid, 16))
    out, _ = module.init_with_output(jax.random.key(0), feats)
    assert out.shape == (2, layout.tokens_per_image, cfg.decoder.hidden_size)
