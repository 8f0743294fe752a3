"""Image loading and preprocessing to uint8 crops; normalisation happens on device (`normalize`).

Aspect modes (all produce `image_size` x `image_size`):
- `pad`: LLaVA's expand2square with the mean colour (as int(255 * mean)), then resize.
- `resize`: resize to a square, ignoring aspect ratio (SigLIP's processor).
- `crop`: resize the shortest side, then centre crop (CLIP's processor).
Resizing is PIL's, on uint8, exactly as HF's PIL-backend image processors do, so the output equals
theirs before rescale/normalise.

Decoding (`decode`) gives 8-bit RGB from every PIL mode: 8-bit modes as PIL converts them (alpha dropped,
as LLaVA's `.convert("RGB")`); 16-bit (I;16*) and 32-bit integer (I, values 0..65535) images scaled from
16 bits, float (F) images from 0..1 (or 0..255) to 0..255, instead of PIL's clipping (near-white /
near-black); anything else is skipped as `unsupported_image_mode`. An image of more than `max_pixels`
pixels (default PIL's decompression-bomb limit) is skipped as `image_too_large` from its header alone.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from vlm_jax.data.errors import SkipExample
from vlm_jax.image_layout import tile_grid

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS (~0.25 GB of RGB at 8 bits)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
ASPECTS = ("pad", "resize", "crop")


@functools.lru_cache(maxsize=64)
def _real_folder(absolute: str) -> str:
    # per example this was a tenth of the loader's time; a run's image folders do not move under it
    return os.path.realpath(absolute)


def resolve_path(folder: str, rel: str) -> str:
    """Join `rel` to `folder`, refusing paths that escape it (.., absolute paths, symlinks out)."""
    root = _real_folder(os.path.abspath(folder or "."))
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


def decode(data: bytes, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes -> RGB PIL image, fully loaded; bad bytes raise SkipExample."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise SkipExample("not_an_image", name) from None
    except Image.DecompressionBombError as e:  # past twice PIL's own limit
        raise SkipExample("image_too_large", f"{name}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise SkipExample("corrupt_image", f"{name}: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise SkipExample("image_too_large", f"{name}: {w}x{h} = {w * h:,} pixels > the limit of {max_pixels:,} "
                                             "(data.image.max_pixels)")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SkipExample("corrupt_image", f"{name}: {e}") from None
    return to_rgb(img, name)


def to_rgb(img: Image.Image, name: str = "") -> Image.Image:
    """Any PIL mode -> 8-bit RGB over the image's full range (see the module doc)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return Image.fromarray(_to_8_bit(np.asarray(img), img.mode, name)).convert("RGB")
    try:
        return (img.convert("LA") if img.mode == "La" else img).convert("RGB")
    except ValueError as e:
        raise SkipExample("unsupported_image_mode", f"{name}: mode {img.mode}: {e}") from None


def _to_8_bit(a: np.ndarray, mode: str, name: str) -> np.ndarray:
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "F":
        if not np.isfinite(a).all() or lo < 0 or hi > 255:
            raise SkipExample("unsupported_image_mode", f"{name}: float image with values in [{lo:g}, {hi:g}] "
                                                        "(expected 0..1 or 0..255)")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.round(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if lo < 0 or hi > 65535:
        raise SkipExample("unsupported_image_mode", f"{name}: {mode} image with values in [{lo:g}, {hi:g}] "
                                                    "(expected 16-bit, 0..65535)")
    return ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)


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
