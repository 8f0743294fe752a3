"""The vision tower of Centurio's training code: timm's `VisionTransformer` as
`timm.create_model("vit_so400m_patch14_siglip_384", num_classes=0)` builds it (class_token=False,
global_pool='map', qkv_bias, nn.GELU, LayerNorm eps 1e-6, no pre-norm, no layer scale), transcribed
from timm 1.0.31 (github.com/huggingface/pytorch-image-models, tag v1.0.31: timm/models/vision_transformer.py
`VisionTransformer`, `Block`, `forward_intermediates`; timm/layers/attention.py `Attention`, mlp.py `Mlp`,
patch_embed.py `PatchEmbed`, attention_pool.py `AttentionPoolLatent`), Apache-2.0, with timm's module names,
so that `state_dict()` has the keys a Centurio checkpoint has. timm itself cannot be installed here: it
imports torchvision, whose PyPI build is CUDA-only and does not load beside the CPU torch.

`centurio_tower()` adds what Centurio's LlavaForConditionalGeneration.__init__ (src/modules/modeling/llava.py,
github.com/gregor-ge/Centurio at 8f6ed69ea14e52feaf45dc3909d1a4fe003503b7) does to it: forward =
`get_intermediate_layers(n={len(blocks) - 2})`, first element of the result. The attention pool holds
its parameters only (with num_classes=0 Centurio never calls it).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)
        self.norm = nn.Identity()

    def forward(self, x):
        x = self.proj(x)
        x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        return self.norm(x)


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.norm(x)
        x = self.proj(x)
        return self.proj_drop(x)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class AttentionPoolLatent(nn.Module):  # parameters only (see the module docstring)
    def __init__(self, embed_dim, num_heads, mlp_ratio, norm_layer):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.q = nn.Linear(embed_dim, embed_dim, bias=True)
        self.kv = nn.Linear(embed_dim, embed_dim * 2, bias=True)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(0.0)
        self.norm = norm_layer(embed_dim)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio))


class VisionTransformer(nn.Module):
    def __init__(self, img_size=384, patch_size=14, embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches, embed_dim) * .02)
        self.pos_drop = nn.Dropout(0.0)
        self.patch_drop = nn.Identity()
        self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.attn_pool = AttentionPoolLatent(embed_dim, num_heads, mlp_ratio, norm_layer)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Identity()

    def _pos_embed(self, x):
        return self.pos_drop(x + self.pos_embed)  # no class token, no dynamic size

    def forward_intermediates(self, x, indices, norm=False):  # output_fmt='NLC', intermediates_only=True
        take_indices = list(indices)
        intermediates = []
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        return intermediates

    def get_intermediate_layers(self, x, n=1, norm=False):
        return self.forward_intermediates(x, n, norm=norm)


def centurio_tower(**kw) -> VisionTransformer:
    tower = VisionTransformer(**kw)

    def unpack_tuple(fn):  # Centurio's llava.py, from prismatic-vlms
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            return result[0] if isinstance(result, tuple) or isinstance(result, list) else result

        return wrapper

    tower.forward = unpack_tuple(partial(tower.get_intermediate_layers, n={len(tower.blocks) - 2}))
    return tower
