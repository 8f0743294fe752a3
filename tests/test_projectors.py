"""Projectors against PyTorch implementations of the published structures (MobileVLM LDP, VILA
mlp_downsample, Centurio multiscale-pool), on random weights, float32."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from vlm_jax.config import DecoderConfig, ModelConfig, ProjectorConfig, VisionConfig
from vlm_jax.models import projectors


# ---------------------------------------------------------------- PyTorch references (published structure)


class LayerNorm2d(tnn.LayerNorm):  # timm LayerNormAct2d with act_layer=None
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SqueezeExcitation(tnn.Module):  # torchvision.ops.SqueezeExcitation, Hardsigmoid scale
    def __init__(self, c, sq):
        super().__init__()
        self.fc1, self.fc2 = tnn.Conv2d(c, sq, 1), tnn.Conv2d(sq, c, 1)

    def forward(self, x):
        s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(tnn.Module):  # torchvision mobilenetv3, expanded == input channels
    def __init__(self, c, stride):
        super().__init__()
        sq = max(8, int(c // 4 + 4) // 8 * 8)
        sq = sq + 8 if sq < 0.9 * (c // 4) else sq
        self.block = tnn.Sequential(
            tnn.Sequential(tnn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), LayerNorm2d(c), tnn.Hardswish()),
            SqueezeExcitation(c, sq),
            tnn.Sequential(tnn.Conv2d(c, c, 1, bias=False), LayerNorm2d(c)),
        )
        self.use_res = stride == 1

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class TorchLDP(tnn.Module):
    def __init__(self, inc, ouc):
        super().__init__()
        self.mlp = tnn.Sequential(tnn.Identity(), tnn.Linear(inc, ouc), tnn.GELU(), tnn.Linear(ouc, ouc))
        self.mb_block = tnn.Sequential(tnn.Identity(), InvertedResidual(ouc, 1), InvertedResidual(ouc, 2))

    def forward(self, x):
        b, t, _ = x.shape
        h = int(math.sqrt(t))
        x = self.mlp(x).permute(0, 2, 1).reshape(b, -1, h, h)
        return self.mb_block(x).flatten(2).permute(0, 2, 1)


def torch_flat_square(x):  # VILA DownSampleBlock.flat_square, verbatim logic
    n, w, h, c = x.size()
    if w % 2 == 1:
        x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1).contiguous()
        n, w, h, c = x.size()
    if h % 2 == 1:
        x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2).contiguous()
        n, w, h, c = x.size()
    x = x.view(n, w, int(h / 2), int(c * 2)).permute(0, 2, 1, 3).contiguous()
    return x.view(n, int(h / 2), int(w / 2), int(c * 4))


class TorchDownsample(tnn.Module):
    def __init__(self, inc, ouc):
        super().__init__()
        self.layers = tnn.Sequential(tnn.Identity(), tnn.LayerNorm(inc * 4), tnn.Linear(inc * 4, ouc), tnn.GELU(), tnn.Linear(ouc, ouc))

    def forward(self, x):
        h = int(x.shape[1] ** 0.5)
        x = torch_flat_square(x.reshape(x.shape[0], h, h, -1))
        return self.layers[1:](x.reshape(x.shape[0], -1, x.shape[-1]))


class TorchMultiscalePool(tnn.Module):  # Centurio MultiscalePoolProjector (einops written out)
    def __init__(self, inc, ouc, s=2):
        super().__init__()
        self.s = s
        self.linear_1, self.linear_2 = tnn.Linear(inc * 2, ouc), tnn.Linear(ouc, ouc)

    def forward(self, feats):  # [(b * (1+s*s)), T, C], global first
        bk, t, c = feats.shape
        h, s = int(math.sqrt(t)), self.s
        f = feats.reshape(bk, h, h, c).permute(0, 3, 1, 2)
        steps = 1 + s * s
        low = f[::steps]
        high = f[[i for i in range(bk) if i % steps > 0]]
        b = low.shape[0]
        # "(b m) d h w -> b d h (m w)", then "(b m) d h w -> b d (m h) w"
        m1 = high.reshape(-1, s, c, h, h).permute(0, 2, 3, 1, 4).reshape(-1, c, h, s * h)
        m2 = m1.reshape(b, s, c, h, s * h).permute(0, 2, 1, 3, 4).reshape(b, c, s * h, s * h)
        merged = torch.nn.functional.avg_pool2d(m2, s)
        x = torch.cat([low, merged], dim=1).flatten(2).permute(0, 2, 1)
        return self.linear_2(torch.nn.functional.gelu(self.linear_1(x)))


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
    feats = np.random.default_rng(0).normal(size=(2, grid * grid, 16)).astype(np.float32)
    expected = ref(torch.tensor(feats)).detach().numpy()
    out = run_ours(cfg, ldp_params(ref), feats[:, None])
    assert out.shape == expected.shape == (2, projectors.tokens_per_image(cfg), 32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    if grid == 24:
        assert out.shape[1] == 144


@pytest.mark.parametrize("grid", [4, 5])
def test_mlp_downsample_matches_vila(grid):
    cfg = model_cfg("mlp_downsample", grid)
    ref = randomize(TorchDownsample(16, 32))
    feats = np.random.default_rng(1).normal(size=(2, grid * grid, 16)).astype(np.float32)
    expected = ref(torch.tensor(feats)).detach().numpy()
    params = {"norm": ln(ref.layers[1]), "linear_1": lin(ref.layers[2]), "linear_2": lin(ref.layers[4])}
    out = run_ours(cfg, params, feats[:, None])
    assert out.shape == expected.shape == (2, projectors.tokens_per_image(cfg), 32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_multiscale_pool_matches_centurio():
    cfg = model_cfg("multiscale-pool", 3)
    assert projectors.crops_per_image(cfg) == 5
    ref = randomize(TorchMultiscalePool(16, 32))
    feats = np.random.default_rng(2).normal(size=(2, 5, 9, 16)).astype(np.float32)
    expected = ref(torch.tensor(feats.reshape(10, 9, 16))).detach().numpy()
    out = run_ours(cfg, {"linear_1": lin(ref.linear_1), "linear_2": lin(ref.linear_2)}, feats)
    assert out.shape == expected.shape == (2, 9, 32)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_registry_names_and_errors():
    for name in ["linear", "identity", "mlp2x_gelu", "mlp3x_gelu", "ldpnet", "mlp_downsample", "multiscale-pool"]:
        projectors.get_spec(name)
    with pytest.raises(ValueError, match="unknown projector type 'mlpx_gelu'"):
        projectors.get_spec("mlpx_gelu")


def test_mlp3x_gelu_depth():
    cfg = model_cfg("mlp3x_gelu", 2)
    module = projectors.build_projector(cfg, jnp.float32, jnp.float32)
    params = module.init(jax.random.key(0), jnp.zeros((1, 1, 4, 16)))["params"]
    assert sorted(params) == ["linear_1", "linear_2", "linear_3"]
