"""Centurio's projector modules, the original code: github.com/gregor-ge/Centurio,
src/modules/modeling/llava_projectors.py at commit 8f6ed69ea14e52feaf45dc3909d1a4fe003503b7 (Apache-2.0; the commented-out adapters after these left out),
copied verbatim: `LlavaMLPProjector`, `LlavaMultiModalAdapter` and the adapters it can build
(`WindowMLPProjector`, `WindowPoolProjector`, `WindowShuffelProjector`, `MultiscalePoolProjector`,
`MultiscaleShuffleProjector`). The file's timm imports (LayerNorm2d, RegStage: used only by adapters
commented out there) are left out: timm cannot be installed here (see timm_siglip.py).
"""

import math

import torch
from einops import rearrange
from torch import nn
from transformers import LlavaConfig
from transformers.activations import ACT2FN


class LlavaMLPProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()

        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size, bias=True)
        self.act = ACT2FN["gelu"]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size, bias=True)

    def forward(self, image_features):
        hidden_states = self.linear_1(image_features)
        hidden_states = self.act(hidden_states)
        hidden_states = self.linear_2(hidden_states)
        return hidden_states

class LlavaMultiModalAdapter(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()

        # if config.adapter_type == "perceiver":
        #     self.adapter = LlavaPerceiver(config)
        # elif config.adapter_type == "ldpv2":
        #     self.adapter = LDPNetV2Adapter(config)
        if config.adapter_type == "window-pool":
            self.adapter = WindowPoolProjector(config)
        elif config.adapter_type == "window-shuffel":
            self.adapter = WindowShuffelProjector(config)
        elif config.adapter_type == "multiscale-pool":
            self.adapter = MultiscalePoolProjector(config)
        elif config.adapter_type == "multiscale-shuffel":
            self.adapter = MultiscaleShuffleProjector(config)

        # elif config.adapter_type == "reg-pool2":
        #     self.adapter = TwoPoolRegNetAdapter(config)
        # elif config.adapter_type == "multiscale-reg-pool2":
        #     self.adapter = MultiScaleTwoPoolRegNetAdapter(config)
        # elif config.adapter_type == "multiscale-reg-pool22":
        #     self.adapter = MultiScaleTwoPoolRegNet2Adapter(config)
        # elif config.adapter_type == "ldp-alter1":
        #     self.adapter = LDPNetAlter1Adapter(config)
        # elif config.adapter_type == "ldp-alter2":
        #     self.adapter = LDPNetAlter2Adapter(config)
        # elif config.adapter_type == "honeybee-c":
        #     self.adapter = CAbstractorAdapter(config)
        # elif config.adapter_type == "multiscale-mlp":
        #     self.adapter = LlavaMLPMultiScaleProjector(config)
        # elif config.adapter_type == "multiscale-ldpv2":
        #     self.adapter = LDPNetV2MultiScaleAdapter(config)
        # elif config.adapter_type == "multiscale-concat-ldpv2":
        #     self.adapter = ConcatMLPMultiScaleAdapter(config)
        # elif config.adapter_type == "multiscale-concat2-ldpv2":
        #     self.adapter = Concat2MLPMultiScaleAdapter(config)
        # elif config.adapter_type == "multiscale-hd-ldpv2":
        #     self.adapter = HDMLPMultiScaleAdapter(config)
        else:
            self.adapter = LlavaMLPProjector(config)

    def forward(self, image_features):
        return self.adapter(image_features)



class WindowMLPProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.multi_scale = getattr(config, "adapter_multi_scale", 2)
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size, bias=True)
        self.act = ACT2FN["gelu"]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size, bias=True)

    def forward(self, image_features):
        hidden_states = self.linear_1(image_features)
        hidden_states = self.act(hidden_states)
        hidden_states = self.linear_2(hidden_states)

        windows = 1 + self.multi_scale**2
        hidden_states = rearrange(hidden_states, "(b h) w d -> b (h w) d", h=windows)

        return hidden_states


class WindowPoolProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.multi_scale = getattr(config, "adapter_multi_scale", 2)
        self.pool = nn.AdaptiveAvgPool2d(getattr(config, "adapter_pool", 8))
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size, bias=True)
        self.act = ACT2FN["gelu"]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size, bias=True)

    def forward(self, image_features):
        hidden_states = self.linear_1(image_features)
        hidden_states = self.act(hidden_states)
        hidden_states = self.linear_2(hidden_states)

        b, num_tokens, c = hidden_states.shape
        h = int(math.sqrt(num_tokens))

        hidden_states = rearrange(hidden_states, "b (h w) d -> b d h w", h=h, w=h)
        hidden_states = self.pool(hidden_states)
        hidden_states = rearrange(hidden_states, "b d h w -> b (h w) d")

        windows = 1 + self.multi_scale**2
        hidden_states = rearrange(hidden_states, "(b h) w d -> b (h w) d", h=windows)
        return hidden_states


class WindowShuffelProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.multi_scale = getattr(config, "adapter_multi_scale", 2)
        self.scale_factor = getattr(config, "adapter_pool", 2)
        self.pixel_unshuffel = nn.PixelUnshuffle(self.scale_factor)
        self.linear_1 = nn.Linear(config.vision_config.hidden_size*(self.scale_factor**2), config.text_config.hidden_size, bias=True)
        self.act = ACT2FN["gelu"]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size, bias=True)



    def forward(self, image_features):
        bsz, seq, embed_dim = image_features.size()
        height = width = int(seq ** 0.5)
        hidden_states = rearrange(image_features, "b (w h) d -> b d w h", w=width, h=height)
        hidden_states = self.pixel_unshuffel(hidden_states)
        hidden_states = rearrange(hidden_states, "b d w h -> b (w h) d")

        hidden_states = self.linear_1(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.linear_2(hidden_states)

        windows = 1 + self.multi_scale ** 2
        hidden_states = rearrange(hidden_states, "(b h) w d -> b (h w) d", h=windows)
        return hidden_states





class MultiscalePoolProjector(nn.Module):
    def __init__(self, config: LlavaConfig):
        super().__init__()

        self.multi_scale = getattr(config, "adapter_multi_scale", 2)
        self.pool = nn.AvgPool2d(self.multi_scale)
        self.linear_1 = nn.Linear(config.vision_config.hidden_size*2, config.text_config.hidden_size, bias=True)
        self.act = ACT2FN["gelu"]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size, bias=True)

    def forward(self, image_features):
        b, num_tokens, c = image_features.shape
        h = int(math.sqrt(num_tokens))
        assert h * h == num_tokens
        image_features = rearrange(image_features, "b (h w) d -> b d h w", h=h, w=h)

        steps = 1 + self.multi_scale**2
        low_res_features = image_features[::steps]
        high_res_features = image_features[[i for i in range(image_features.size(0)) if i%steps > 0]]

        merged_features = rearrange(high_res_features, "(b m) d h w -> b d h (m w)", m=self.multi_scale)
        merged_features = rearrange(merged_features, "(b m) d h w -> b d (m h) w", m=self.multi_scale)

        merged_features = self.pool(merged_features)

        concat_features = torch.cat([low_res_features, merged_features], dim=1)
        concat_features = rearrange(concat_features, "b d h w -> b (h w) d")

        hidden_states = self.linear_1(concat_features)
        hidden_states = self.act(hidden_states)
        hidden_states = self.linear_2(hidden_states)
        return hidden_states


class MultiscaleShuffleProjector(nn.Module):
    def __init__(self, config):
        super().__init__()

        self.multi_scale = getattr(config, "adapter_multi_scale", 2)
        self.shuffle = nn.PixelUnshuffle(self.multi_scale)

        inc, ouc = config.vision_config.hidden_size*(1+self.multi_scale**2), config.text_config.hidden_size
        #
        self.mlp = nn.Sequential(
            nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc)
        )

        self.dwn = nn.AvgPool2d(2) #TokenDownLayer((12, 12))
        self.peg = nn.Conv2d(ouc, ouc, 3, 1, 1, bias=True, groups=ouc) #PosInjectLayer(ouc, ouc, stride=1)

    def forward(self, x):
        b, num_tokens, c = x.shape
        h = int(math.sqrt(num_tokens))
        assert h * h == num_tokens
        image_features = rearrange(x, "b (h w) d -> b d h w", h=h, w=h)

        steps = 1 + self.multi_scale ** 2
        low_res_features = image_features[::steps]
        high_res_features = image_features[[i for i in range(image_features.size(0)) if i % steps > 0]]

        merged_features = rearrange(high_res_features, "(b m) d h w -> b d h (m w)", m=self.multi_scale)
        merged_features = rearrange(merged_features, "(b m) d h w -> b d (m h) w", m=self.multi_scale)

        merged_features = self.shuffle(merged_features)

        concat_features = torch.cat([low_res_features, merged_features], dim=1)
        concat_features = rearrange(concat_features, "b d h w -> b (h w) d")

        x = self.mlp(concat_features)

        # x = self.dwn(x)
        b, num_tokens, c = x.shape
        h = int(math.sqrt(num_tokens))
        assert h * h == num_tokens
        x = rearrange(x, "b (h w) d -> b d h w", h=h, w=h) #x.permute(0, 2, 1).reshape(b, -1, h, h)
        x = self.dwn(x)
        x = self.peg(x) + x
        x = rearrange(x, "b d h w -> b (h w) d") #x.flatten(2).transpose(1, 2)

        return x
