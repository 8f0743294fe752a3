"""Decoding: every PIL mode reaches 8-bit RGB with its full range (16-bit and float images scaled,
not clipped), or is skipped with a named reason; images over the pixel limit are skipped unread."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import images as img_lib
from vlm_jax.data.errors import SkipExample


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _gray(rgb: np.ndarray) -> np.ndarray:
    assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0]


RAMP16 = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520


def test_16_bit_grayscale_png_keeps_its_range():
    data = _encode(Image.fromarray(RAMP16), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    got = _gray(np.asarray(img_lib.decode(data, "x.png")))
    np.testing.assert_array_equal(got, np.round(RAMP16 / 65535 * 255).astype(np.uint8))


def test_32_bit_integer_tiff_holding_16_bit_values_keeps_its_range():
    data = _encode(Image.fromarray(RAMP16.astype(np.int32), "I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    got = _gray(np.asarray(img_lib.decode(data, "x.tif")))
    np.testing.assert_array_equal(got, np.round(RAMP16 / 65535 * 255).astype(np.uint8))


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_tiff_in_0_1_or_0_255_keeps_its_range(scale):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    data = _encode(Image.fromarray(ramp * scale, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    got = _gray(np.asarray(img_lib.decode(data, "x.tif")))
    np.testing.assert_array_equal(got, np.round(ramp * 255).astype(np.uint8))


@pytest.mark.parametrize("values", [(-5.0, 1000.0), (0.0, float("nan"))])
def test_float_image_outside_a_known_range_is_skipped_with_its_reason(values):
    data = _encode(Image.fromarray(np.asarray([values] * 2, np.float32), "F"), "TIFF")
    with pytest.raises(SkipExample) as e:
        img_lib.decode(data, "odd.tif")
    assert e.value.reason == "unsupported_image_mode" and "odd.tif" in str(e.value)


def test_32_bit_integer_image_past_16_bit_is_skipped():
    data = _encode(Image.fromarray(np.asarray([[0, 1 << 20]], np.int32), "I"), "TIFF")
    with pytest.raises(SkipExample) as e:
        img_lib.decode(data, "deep.tif")
    assert e.value.reason == "unsupported_image_mode"


@pytest.mark.parametrize("mode,fmt", [("1", "PNG"), ("L", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"),
                                      ("CMYK", "JPEG"), ("YCbCr", "TIFF"), ("LAB", "TIFF"), ("RGB", "PNG")])
def test_8_bit_modes_convert_as_pil_converts_them(mode, fmt):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    data = _encode(img, fmt)
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    got = img_lib.decode(data, f"x.{fmt.lower()}")
    assert got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got), want)


def test_premultiplied_la_converts():
    img = Image.new("La", (3, 2), (100, 255))  # PIL cannot convert La to RGB directly
    np.testing.assert_array_equal(_gray(np.asarray(img_lib.to_rgb(img, "x"))), np.full((2, 3), 100))


def test_image_over_the_pixel_limit_is_skipped_before_decoding():
    big = _encode(Image.new("1", (10_000, 10_000)), "PNG")  # 100 megapixels, a few kB on disk
    t = time.perf_counter()
    with pytest.raises(SkipExample) as e:
        img_lib.decode(big, "big.png")  # default limit: PIL's decompression-bomb bound, 89,478,485 pixels
    assert e.value.reason == "image_too_large" and "big.png" in str(e.value) and "10000x10000" in str(e.value)
    assert time.perf_counter() - t < 1.0, "the header is enough to refuse it"
    assert img_lib.DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
    small = _encode(Image.new("RGB", (20, 10)), "PNG")
    assert img_lib.decode(small, "s.png", max_pixels=200).size == (20, 10)
    with pytest.raises(SkipExample, match="image_too_large"):
        img_lib.decode(small, "s.png", max_pixels=199)
