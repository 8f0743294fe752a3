"""VILA's `mlp_downsample` projector, the original code: github.com/NVlabs/VILA,
llava/model/multimodal_projector/base_projector.py (Apache-2.0), `DownSampleBlock` copied verbatim from two
commits (only the class names differ here):
- `DownSampleBlockVILA15`: at 54c970676ce96a5f7df372b5d25b2b98057716c2 ("Support LongVILA", the VILA-1.5 code);
- `DownSampleBlockNVILA`: at b760c34b9487fd736b4075f5111fbef3d80a37e9 (since "NVILA release" 36f6adc it
  permutes the 2x2 grid back: a second `permute(0, 2, 1, 3)`).
`MultimodalProjector` holds `layers` as that file's `MultimodalProjector.__init__` builds them for
mm_projector_type "mlp_downsample", so that its state_dict() names are a VILA mm_projector folder's.
"""

import torch
from torch import nn


class DownSampleBlockVILA15(nn.Module):
    def forward(self, x):
        vit_embeds = x
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.flat_square(vit_embeds)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return vit_embeds

    def flat_square(self, x):
        n, w, h, c = x.size()
        if w % 2 == 1:
            x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype).to(x.device)], dim=1).contiguous()
            n, w, h, c = x.size()
        if h % 2 == 1:
            x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype).to(x.device)], dim=2).contiguous()
            n, w, h, c = x.size()
        x = x.view(n, w, int(h / 2), int(c * 2))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
        return x


class DownSampleBlockNVILA(nn.Module):
    def forward(self, x):
        vit_embeds = x
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.flat_square(vit_embeds)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return vit_embeds

    def flat_square(self, x):
        n, w, h, c = x.size()
        if w % 2 == 1:
            x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype).to(x.device)], dim=1).contiguous()
            n, w, h, c = x.size()
        if h % 2 == 1:
            x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype).to(x.device)], dim=2).contiguous()
            n, w, h, c = x.size()
        x = x.contiguous()
        x = x.view(n, w, int(h / 2), int(c * 2))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
        x = x.permute(0, 2, 1, 3).contiguous()
        return x


class MultimodalProjector(nn.Module):
    def __init__(self, mm_hidden_size: int, hidden_size: int, nvila: bool):
        super().__init__()
        self.layers = nn.Sequential(
            DownSampleBlockNVILA() if nvila else DownSampleBlockVILA15(),
            nn.LayerNorm(mm_hidden_size * 4),
            nn.Linear(mm_hidden_size * 4, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, x):
        return self.layers(x)
