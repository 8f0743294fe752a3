"""PyTorch transcriptions of the published projector structures (MobileVLM LDP, VILA
mlp_downsample, Centurio multiscale-pool), used as oracles for vlm_jax's projectors."""

import math

import torch
from torch import nn as tnn


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
