"""tools.prepare_data leaves exactly one whole set of shards: a rerun into a folder that holds data
refuses (or with --overwrite replaces the set at once), a failed run leaves nothing behind."""

import os

import pytest

from tests.helpers.data import data_config, loader_kwargs, make_records, png_bytes, write_images, write_json
from tools.prepare_data import main
from vlm_jax.data.pipeline import DataLoader


def _files(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def _examples(folder):
    ld = DataLoader(data_config(folder, "", num_epochs=1, packing=False), **loader_kwargs())
    list(ld)
    return ld.stats()["examples"]


@pytest.fixture
def data(tmp_path):
    write_images(str(tmp_path / "img"))
    return write_json(str(tmp_path / "d.json"), make_records(10)), str(tmp_path / "img")


def test_rerun_with_fewer_shards_refuses_or_replaces_the_whole_set(tmp_path, data, capsys):
    src, img = data
    out = str(tmp_path / "out")
    args = ["--src", src, "--image-folder", img, "--out", out, "--quiet"]
    assert main(args + ["--shards", "4"]) == 0
    first = _files(out)
    assert len(first) == 4 and _examples(out) == 10
    capsys.readouterr()
    assert main(args + ["--shards", "2"]) == 2  # not asked to replace: nothing changes
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and out in err[0] and "--overwrite" in err[0]
    assert _files(out) == first
    assert main(args + ["--shards", "2", "--overwrite"]) == 0
    assert len(_files(out)) == 2 and _examples(out) == 10  # every record once, not the old shards too
    assert sorted(os.listdir(tmp_path)) == ["d.json", "img", "out"]  # no temporary folder left

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["--src", src, "--image-folder", img, "--out", str(tmp_path / "mine"), "--quiet"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_strict_failure_leaves_no_partial_shards(tmp_path, data):
    src, img = data
    recs = make_records(10)
    recs[7] = {"id": "gone", "image": "missing.png", "conversations": recs[1]["conversations"]}
    bad = write_json(str(tmp_path / "bad.json"), recs)
    out = str(tmp_path / "out")
    assert main(["--src", bad, "--image-folder", img, "--out", out, "--strict", "--quiet", "--shards", "3"]) == 1
    assert not os.path.exists(out)
    assert main(["--src", src, "--image-folder", img, "--out", out, "--quiet"]) == 0
    before = _files(out)
    assert main(["--src", bad, "--image-folder", img, "--out", out, "--strict", "--quiet", "--overwrite"]) == 1
    assert _files(out) == before  # the old set stays whole
    assert sorted(os.listdir(tmp_path)) == ["bad.json", "d.json", "img", "out"]


def test_lone_surrogate_and_large_image_are_skipped_and_counted(tmp_path, data, capsys):
    import json

    _, img = data
    recs = make_records(6, text_only_every=1)
    recs[2]["conversations"][1]["value"] = "broken \ud800 text"
    recs[4] = {"id": "big", "image": "big.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                 {"from": "gpt", "value": "a"}]}
    with open(os.path.join(img, "big.png"), "wb") as f:
        f.write(png_bytes(100, 60))
    src = write_json(str(tmp_path / "s.json"), recs)
    capsys.readouterr()
    assert main(["--src", src, "--image-folder", img, "--out", str(tmp_path / "o"), "--quiet",
                 "--max-image-pixels", "5000"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 4 and summary["skipped_by_reason"] == {"bad_text": 1, "image_too_large": 1}
