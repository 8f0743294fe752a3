"""Every class of bad input is skipped and counted, or with strict: true raises naming file and id."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers.data import data_config, loader_kwargs, make_records, png_bytes, write_images
from vlm_jax.config import ImageConfig
from vlm_jax.data.errors import DataError
from vlm_jax.data.pipeline import DataLoader


def conv(q="hi", a="ok"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


BAD = {
    "malformed_record": {"id": "bad", "conversations": "not a list"},
    "empty_conversation": {"id": "bad", "conversations": []},
    "bad_role_order": {"id": "bad", "conversations": conv()[:1] + conv()},
    "image_tag_mismatch": {"id": "bad", "image": "img0.png", "conversations": conv("<image> <image> two tags")},
    "too_many_images": {"id": "bad", "image": ["img0.png"] * 4,
                        "conversations": conv("<image>" * 4 + " four")},
    "unsafe_image_path": {"id": "bad", "image": "../outside.png", "conversations": conv("<image> q")},
    "missing_image": {"id": "bad", "image": "nope.png", "conversations": conv("<image> q")},
    "not_an_image": {"id": "bad", "image": "text.png", "conversations": conv("<image> q")},
    "corrupt_image": {"id": "bad", "image": "cut.jpg", "conversations": conv("<image> q")},
    "unsupported_image_mode": {"id": "bad", "image": "float.tif", "conversations": conv("<image> q")},
    "image_too_large": {"id": "bad", "image": "big.png", "conversations": conv("<image> q")},
    "no_supervised_tokens": {"id": "bad", "conversations": [{"from": "human", "value": "only a question"}]},
    "bad_text": {"id": "bad", "conversations": conv("a lone surrogate \ud800 is no text")},
    "fewer_tags": {"id": "bad", "image": ["img0.png", "img1.png"], "conversations": conv("<image> one tag")},
}
REASON = {**{k: k for k in BAD}, "fewer_tags": "image_tag_mismatch"}
CONFIG = {"image_too_large": {"image": ImageConfig(image_size=8, tiling="none", max_pixels=5000)}}


def write_dataset(tmp_path, bad, fmt="json"):
    img = tmp_path / "img"
    write_images(str(img))
    (img / "text.png").write_text("definitely not a png")
    (img / "cut.jpg").write_bytes(png_bytes(64, 64, fmt="JPEG")[:200])
    buf = io.BytesIO()
    Image.fromarray(np.asarray([[-5.0, 1000.0]] * 2, np.float32), "F").save(buf, "TIFF")
    (img / "float.tif").write_bytes(buf.getvalue())
    (img / "big.png").write_bytes(png_bytes(100, 60))  # 6000 pixels
    (tmp_path / "outside.png").write_bytes(png_bytes())
    good = make_records(9)
    recs = good[:4] + [bad] + good[4:]
    if fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(recs))
    else:
        path = tmp_path / "d.jsonl"
        lines = [json.dumps(r) for r in recs]
        if bad is None:
            lines[4] = '{"id": "bad", "conversations": [ this is not json'
        path.write_text("\n".join(lines) + "\n")
    return str(path), str(img), len(good)


def run(path, img, **kw):
    loader = DataLoader(data_config(path, img, num_epochs=1, **kw), **loader_kwargs())
    n = sum(int(b["segment_ids"].max(axis=1).sum()) for b in loader)
    return loader, n


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_is_skipped_and_counted(tmp_path, case):
    path, img, n_good = write_dataset(tmp_path, BAD[case])
    loader, n = run(path, img, **CONFIG.get(case, {}))
    assert n == n_good, "the rest of the data survives"
    st = loader.stats()
    assert st["skipped_examples"] == 1 and st["skipped_by_reason"] == {REASON[case]: 1}
    assert st["examples"] == n_good


@pytest.mark.parametrize("case", sorted(BAD))
def test_strict_mode_names_file_and_record(tmp_path, case):
    path, img, _ = write_dataset(tmp_path, BAD[case])
    with pytest.raises(DataError) as e:
        run(path, img, strict=True, **CONFIG.get(case, {}))
    msg = str(e.value)
    assert path in msg and "record 4" in msg and REASON[case] in msg
    if case != "malformed_record":
        assert "'bad'" in msg


def test_malformed_jsonl_line(tmp_path):
    path, img, n_good = write_dataset(tmp_path, None, fmt="jsonl")
    loader, n = run(path, img)
    assert n == n_good and loader.stats()["skipped_by_reason"] == {"malformed_record": 1}
    with pytest.raises(DataError, match=r"d\.jsonl: record 4 .*malformed_record"):
        run(path, img, strict=True)


def test_unreadable_json_file_fails_loudly(tmp_path):
    (tmp_path / "d.json").write_text("[{")
    with pytest.raises(DataError, match="d.json"):
        run(str(tmp_path / "d.json"), "")
    with pytest.raises(DataError, match="not found"):
        run(str(tmp_path / "missing.json"), "")


def test_skip_counts_survive_restore(tmp_path):
    path, img, _ = write_dataset(tmp_path, BAD["missing_image"])
    cfg = data_config(path, img, num_epochs=2, packing=False)
    a = DataLoader(cfg, **loader_kwargs())
    for _ in range(3):
        next(a)
    b = DataLoader(cfg, **loader_kwargs())
    b.set_state(json.loads(json.dumps(a.get_state())))
    list(a), list(b)
    assert a.stats() == b.stats() and a.stats()["skipped_by_reason"] == {"missing_image": 2}
