"""Image loading and preprocessing to uint8 crops; normalisation happens on device (`normalize`).

Aspect modes (all produce `image_size` x `image_size`):
- `pad`: LLaVA's expand2square with the mean colour (as int(255 * mean)), then resize.
- `resize`: resize to a square, ignoring aspect ratio (SigLIP's processor).
- `crop`: resize the shortest side, then centre crop (CLIP's processor).
Resizing is PIL's, on uint8, exactly as HF's PIL-backend image processors do, so the output equals
theirs before rescale/normalise.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax.data.errors import SkipExample

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
ASPECTS = ("pad", "resize", "crop")


def tile_grid(tiling: str) -> int:
    """'none' -> 0, 'SxS' -> S (a global view plus S x S tiles)."""
    if tiling == "none":
        return 0
    a, _, b = tiling.partition("x")
    if not (a.isdigit() and a == b and int(a) >= 1):
        raise ValueError(f"unknown tiling {tiling!r} (none, or SxS such as 2x2)")
    return int(a)


def num_crops(tiling: str) -> int:
    """K: crops per image (1, or 1 + S*S = global view + SxS tiles)."""
    s = tile_grid(tiling)
    return 1 + s * s if s else 1


def resolve_path(folder: str, rel: str) -> str:
    """Join `rel` to `folder`, refusing paths that escape it (.., absolute paths, symlinks out)."""
    root = os.path.realpath(folder or ".")
    full = os.path.realpath(os.path.join(root, rel))
    if os.path.isabs(rel) or os.path.commonpath([root, full]) != root:
        raise SkipExample("unsafe_image_path", rel)
    return full


def read_file(folder: str, rel: str) -> bytes:
    path = resolve_path(folder, rel)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SkipExample("missing_image", rel) from None
    except IsADirectoryError:
        raise SkipExample("not_an_image", f"{rel} is a directory") from None
    except OSError as e:
        raise SkipExample("missing_image", f"{rel}: {e}") from None


def decode(data: bytes, name: str = "") -> Image.Image:
    """Bytes -> RGB PIL image, fully loaded; bad bytes raise SkipExample."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise SkipExample("not_an_image", name) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SkipExample("corrupt_image", f"{name}: {e}") from None
    try:
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SkipExample("corrupt_image", f"{name}: {e}") from None


def pad_color(mean: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(x * 255) for x in mean)


def expand2square(img: Image.Image, color: tuple[int, ...]) -> Image.Image:
    """LLaVA's expand2square: paste the image centred on a square of `color`."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def _resize_shortest_and_crop(img: Image.Image, size: int, resample) -> Image.Image:
    # HF get_resize_output_image_size(default_to_square=False) and center_crop, on PIL.
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    top, left = int((new_h - size) / 2.0), int((new_w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def preprocess(img: Image.Image, aspect: str, size: int, mean: Sequence[float], resample: str = "bicubic") -> np.ndarray:
    """One RGB image -> uint8 [size, size, 3]."""
    rs = _RESAMPLE[resample]
    if aspect == "pad":
        img = _resize_shortest_and_crop(expand2square(img, pad_color(mean)), size, rs)
    elif aspect == "resize":
        img = img.resize((size, size), rs) if img.size != (size, size) else img
    elif aspect == "crop":
        img = _resize_shortest_and_crop(img, size, rs)
    else:
        raise ValueError(f"unknown aspect mode {aspect!r} (one of {', '.join(ASPECTS)})")
    return np.asarray(img, dtype=np.uint8)


def crops(img: Image.Image, aspect: str, size: int, mean: Sequence[float], tiling: str = "none",
          resample: str = "bicubic") -> np.ndarray:
    """One image -> uint8 [K, size, size, 3]: the global view, then the SxS tiles in row-major order
    (the layout of the `multiscale-pool` projector)."""
    views = [preprocess(img, aspect, size, mean, resample)]
    s = tile_grid(tiling)
    if s:
        big = preprocess(img, aspect, s * size, mean, resample)
        views += [big[r * size : (r + 1) * size, c * size : (c + 1) * size] for r in range(s) for c in range(s)]
    return np.stack(views)


def normalize(images, mean: Sequence[float], std: Sequence[float]):
    """uint8 [..., 3] -> float32 (x / 255 - mean) / std, on device (jit-able)."""
    import jax.numpy as jnp  # noqa: PLC0415 (keep the host pipeline importable without jax)

    x = jnp.asarray(images).astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
