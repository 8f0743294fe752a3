"""The real template + tokenizer through the loader, and the inspector CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.helpers.data import make_records, write_images, write_json
from tests.helpers.tiny_tokenizers import train_llama_like_sentencepiece


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    tok = train_llama_like_sentencepiece(str(tmp / "tok"))
    write_images(str(tmp / "img"))
    recs = make_records(12)
    recs[3]["conversations"][1]["value"] = "The car is red."
    write_json(str(tmp / "d.json"), recs)
    cfg = {
        "model": {"vision": {"image_size": 28, "patch_size": 14}, "image_token_id": 32000},
        "data": {"sources": [{"path": str(tmp / "d.json"), "image_folder": str(tmp / "img")}],
                 "tokenizer": tok, "template": "vicuna_v1", "seq_len": 256, "max_images": 4,
                 "num_workers": 1, "pack_window": 4},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path), tok, recs


def test_real_template_through_the_loader(setup):
    from vlm_jax.config import Config, load
    from vlm_jax.data import templates
    from vlm_jax.data.examples import expand_images
    from vlm_jax.data.pipeline import make_loader
    from vlm_jax.tokenizer import load_tokenizer

    path, tok_path, recs = setup
    cfg = load(Config, path, ["data.num_epochs=1", "data.shuffle=false", "data.packing=false"])
    loader = make_loader(cfg, batch_size=1, process_index=0, process_count=1)
    n = loader.spec.tokens_per_image
    tok = load_tokenizer(tok_path)
    for rec in recs[:4]:
        row = loader.next_row()
        enc = templates.encode(rec["conversations"], "vicuna_v1", tok)
        want_t, want_m, _ = expand_images(enc.tokens, enc.label_mask, n, 32000)
        T = len(want_t)
        np.testing.assert_array_equal(row["tokens"][:T], want_t)
        np.testing.assert_array_equal(row["loss_mask"][: T - 1], want_m[1:])
        assert row["image_mask"].sum() == rec["conversations"][0]["value"].count("<image>")


def test_inspector_json(setup):
    path, _, _ = setup
    out = subprocess.run([sys.executable, "-m", "tools.inspect_data", "--config", path, "--n", "3", "--json",
                          "data.seq_len=512"], capture_output=True, text=True, check=True).stdout
    objs = [json.loads(line) for line in out.strip().splitlines()]
    ex = [o for o in objs if o["type"] == "example"]
    rows = [o for o in objs if o["type"] == "row"]
    assert len(ex) == 3 and len(rows) == 3 and objs[-1]["type"] == "stats"
    assert all(len(e["tokens"]) == len(e["loss_mask"]) and set(e["loss_mask"]) <= {0, 1} for e in ex)
    assert all(len(r["tokens"]) == 512 and r["num_images"] <= 4 for r in rows)


def test_inspector_text_and_bad_usage(setup):
    path, _, _ = setup
    out = subprocess.run([sys.executable, "-m", "tools.inspect_data", "--config", path, "--n", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert "=== example" in out and "[[" in out and "--- segment 1" in out and "<image x4>" in out
    bad = subprocess.run([sys.executable, "-m", "tools.inspect_data", "--config", path, "data.nope=1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "data.nope" in bad.stderr


def test_tiling_follows_the_model(setup):
    from vlm_jax.config import Config, load
    from vlm_jax.data.errors import DataError
    from vlm_jax.data.pipeline import make_loader

    path, _, _ = setup
    ms = ["model.projector.type=multiscale-pool", "data.num_epochs=1"]
    loader = make_loader(load(Config, path, ms), batch_size=2, process_index=0, process_count=1)
    assert next(loader)["images"].shape[2:] == (5, 28, 28, 3)
    with pytest.raises(DataError, match="tiling"):
        make_loader(load(Config, path, ms + ["data.image.tiling=none"]), batch_size=2, process_index=0,
                    process_count=1)



def test_lone_surrogate_is_skipped_as_bad_text(setup, tmp_path, capsys):
    """"\\ud800" is valid JSON but no Unicode text: SentencePiece raised a RuntimeError in the loader
    and in the inspector."""
    from tools.inspect_data import main as inspect
    from vlm_jax.config import Config, load
    from vlm_jax.data.pipeline import make_loader

    path, _, recs = setup
    sur = dict(recs[0], id="sur", conversations=[{"from": "human", "value": "hi \ud800 there"},
                                                 {"from": "gpt", "value": "ok"}])
    data = write_json(str(tmp_path / "sur.json"), [sur, *recs[:3]])
    assert "\\ud800" in open(data).read()
    raw = yaml.safe_load(open(path))
    raw["data"]["sources"][0]["path"] = data
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    loader = make_loader(load(Config, str(cfg_path), ["data.num_epochs=1"]), batch_size=1, process_index=0,
                         process_count=1)
    list(loader)
    assert loader.stats()["skipped_by_reason"] == {"bad_text": 1} and loader.stats()["examples"] == 3
    assert inspect(["--config", str(cfg_path), "--n", "1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["type"] == "skipped" and lines[0]["reason"] == "bad_text" and "'sur'" in lines[0]["message"]
