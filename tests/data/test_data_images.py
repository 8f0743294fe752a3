"""Image preprocessing: parity with HF's CLIP/SigLIP processors (PIL backend), tiles, safety."""

import os

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import images as img_lib
from vlm_jax.data.errors import SkipExample
from vlm_jax.image_layout import crops_for_tiling

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIZES = [(500, 375), (375, 500), (336, 336), (123, 77), (1000, 999)]


def _image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
    noise = rng.integers(-20, 20, (h, w, 3))
    return Image.fromarray(np.clip(smooth.astype(int) + noise, 0, 255).astype(np.uint8))


def _ours(img, aspect, size, mean, std):
    return np.asarray(img_lib.normalize(img_lib.preprocess(img, aspect, size, mean), mean, std))


def _clip_processor(size):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 do_center_crop=True, resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def _siglip_processor(size):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": size, "width": size}, resample=3,
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def _hf(proc, img):
    return np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0)


def _assert_close(ours, ref, std):
    # within 1/255 in pixel units after normalisation
    err = np.abs(ours - ref) * np.asarray(std)
    assert err.max() <= 1 / 255 + 1e-6, err.max()


@pytest.mark.parametrize("w,h", SIZES)
def test_clip_crop_matches_hf(w, h):
    img = _image(w, h)
    _assert_close(_ours(img, "crop", 336, CLIP_MEAN, CLIP_STD), _hf(_clip_processor(336), img), CLIP_STD)


@pytest.mark.parametrize("w,h", SIZES)
def test_llava_pad_matches_expand2square_then_clip(w, h):
    img = _image(w, h, 1)
    ref = _hf(_clip_processor(336), img_lib.expand2square(img, tuple(int(x * 255) for x in CLIP_MEAN)))
    _assert_close(_ours(img, "pad", 336, CLIP_MEAN, CLIP_STD), ref, CLIP_STD)


@pytest.mark.parametrize("w,h", SIZES)
def test_siglip_resize_matches_hf(w, h):
    img = _image(w, h, 2)
    half = (0.5, 0.5, 0.5)
    _assert_close(_ours(img, "resize", 384, half, half), _hf(_siglip_processor(384), img), half)


def test_expand2square_centres_on_mean_colour():
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    sq = np.asarray(img_lib.expand2square(img, (1, 2, 3)))
    assert sq.shape == (4, 4, 3)
    assert (sq[0] == (1, 2, 3)).all() and (sq[3] == (1, 2, 3)).all() and (sq[1:3] == (255, 0, 0)).all()


def test_tiles_are_global_view_then_2x2_row_major():
    img = _image(90, 60, 3)
    out = img_lib.crops(img, "pad", 16, CLIP_MEAN, tiling="2x2")
    assert out.shape == (5, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], img_lib.preprocess(img, "pad", 16, CLIP_MEAN))
    big = img_lib.preprocess(img, "pad", 32, CLIP_MEAN)
    np.testing.assert_array_equal(out[2], big[:16, 16:])
    np.testing.assert_array_equal(out[3], big[16:, :16])
    assert img_lib.crops(img, "resize", 16, CLIP_MEAN).shape == (1, 16, 16, 3)
    three = img_lib.crops(img, "crop", 8, CLIP_MEAN, tiling="3x3")
    assert three.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(three[5], img_lib.preprocess(img, "crop", 24, CLIP_MEAN)[8:16, 8:16])
    with pytest.raises(ValueError):
        crops_for_tiling("2x3")


def test_path_escaping_the_folder_is_refused(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", tmp_path / "imgs" / "link.png")
    for bad in ["../secret.png", str(tmp_path / "secret.png"), "a/../../secret.png", "link.png"]:
        with pytest.raises(SkipExample) as e:
            img_lib.read_file(str(tmp_path / "imgs"), bad)
        assert e.value.reason == "unsafe_image_path"


def test_decode_errors_are_classified():
    with pytest.raises(SkipExample) as e:
        img_lib.decode(b"this is text", "a.txt")
    assert e.value.reason == "not_an_image"
    import io

    buf = io.BytesIO()
    _image(64, 64).save(buf, "JPEG")
    with pytest.raises(SkipExample) as e:
        img_lib.decode(buf.getvalue()[:300], "cut.jpg")
    assert e.value.reason == "corrupt_image"
    rgba = io.BytesIO()
    Image.new("RGBA", (3, 3)).save(rgba, "PNG")
    assert img_lib.decode(rgba.getvalue()).mode == "RGB"
