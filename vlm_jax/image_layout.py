"""Where a model config puts its images: N placeholder tokens and K crops per image, and the
tiling that cuts those K crops out of an image.

The data pipeline lays out N placeholders and K crops per image from this, inference builds its
prompts and image arrays from it, fake batches their shapes; the projectors in vlm_jax/models
turn K crops of the vision tower's features into exactly N tokens (tests/models/test_projectors.py
checks every registered type against this table).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from vlm_jax.config import ModelConfig

MLP_GELU = re.compile(r"mlp(\d+)x_gelu")  # LLaVA's mlpNx_gelu: N linears with GELU between


@dataclass(frozen=True)
class ImageLayout:
    tokens_per_image: int  # N: placeholder positions per image in `tokens`
    crops_per_image: int  # K: views of each image in `images` [B, M, K, H, W, 3]
    tiling: str  # how the K views are cut: "none" (K = 1) or "SxS" (a global view + SxS tiles, K = 1 + S*S)


def grid_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"projector needs a square patch grid, got {num_tokens} tokens (drop the CLS token)")
    return side


def _same(tokens: int) -> int:
    return tokens


def _stride_2_conv(tokens: int) -> int:  # ldpnet's second block: 3x3 depthwise conv, stride 2, padding 1
    return ((grid_side(tokens) - 1) // 2 + 1) ** 2


def _space_to_channel_2x2(tokens: int) -> int:  # mlp_downsample: pad the grid to even, 2x2 -> 1
    return ((grid_side(tokens) + 1) // 2) ** 2


# projector type -> tokens out per image, from the T feature tokens of the vision tower
_TOKENS_OUT: dict[str, Callable[[int], int]] = {
    "linear": _same,
    "identity": _same,
    "ldpnet": _stride_2_conv,
    "mlp_downsample": _space_to_channel_2x2,
    "multiscale-pool": _same,  # the tiles are pooled back onto the global view's grid
}
PROJECTOR_TYPES = (*_TOKENS_OUT, "mlpNx_gelu")


def _tokens_out(projector_type: str) -> Callable[[int], int]:
    if projector_type in _TOKENS_OUT:
        return _TOKENS_OUT[projector_type]
    if MLP_GELU.fullmatch(projector_type):
        return _same
    raise ValueError(f"unknown projector type '{projector_type}' (known: {', '.join(PROJECTOR_TYPES)})")


def tile_grid(tiling: str) -> int:
    """'none' -> 0, 'SxS' -> S (a global view plus S x S tiles)."""
    if tiling == "none":
        return 0
    a, _, b = tiling.partition("x")
    if not (a.isdigit() and a == b and int(a) >= 1):
        raise ValueError(f"unknown tiling {tiling!r} (none, or SxS such as 2x2)")
    return int(a)


def crops_for_tiling(tiling: str) -> int:
    """K for a tiling: 'none' -> 1, 'SxS' -> 1 + S*S."""
    s = tile_grid(tiling)
    return 1 + s * s if s else 1


def image_layout(cfg: ModelConfig) -> ImageLayout:
    """N, K and the tiling of `cfg`'s projector over its vision tower's feature tokens."""
    tokens = _tokens_out(cfg.projector.type)(cfg.vision.num_feature_tokens)
    if cfg.projector.type == "multiscale-pool":
        s = cfg.projector.multi_scale
        if s < 1:
            raise ValueError(f"multiscale-pool needs multi_scale >= 1, got {s}")
        return ImageLayout(tokens, 1 + s * s, f"{s}x{s}")
    return ImageLayout(tokens, 1, "none")
