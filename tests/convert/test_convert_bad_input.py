"""The converter on bad input and on folders that already hold something (issue 18 items 2, 4, 15, 17):
one `error:` line naming the file or option, exit 2, never torch's weights_only=False advice, nothing the
user had deleted without --overwrite, and exactly one consistent set of weight files after a re-export."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch

from convert.cli import main
from tests.helpers.convert_models import assert_same_tensors, cli, make_hf_llava, save_original, tensors


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main([*argv, "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def one_error_line(err: list[str], *words: str) -> None:
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert "weights_only=False" not in "\n".join(err)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("bad") / "hf")
    make_hf_llava(path, "clip", "llama", -2, "default")
    return path


def test_missing_src_is_usage(tmp_path, capsys):
    rc, err = run(capsys, "import", "--format", "hf-llava", "--src", "/no/src", "--out", str(tmp_path / "o"))
    assert rc == 2
    one_error_line(err, "/no/src")


def test_import_into_a_non_empty_folder(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "params").mkdir(parents=True)
    (out / "params" / "mine.txt").write_text("keep me")
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "notes.txt").write_text("mine too")
    rc, err = run(capsys, "import", "--format", "hf-llava", "--src", hf_dir, "--out", str(out))
    assert rc == 2
    one_error_line(err, str(out), "--overwrite")
    assert (out / "params" / "mine.txt").read_text() == "keep me" and (out / "tokenizer" / "notes.txt").exists()
    # --overwrite: written beside it and swapped in; nothing of the old folder remains, no temporary left
    cli("import", "--format", "hf-llava", "--src", hf_dir, "--out", str(out), "--overwrite")
    assert not (out / "params" / "mine.txt").exists() and (out / "conversion.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a failed import with --overwrite leaves the folder as it was
    bad = tmp_path / "badsrc"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    before = sorted(os.listdir(out))
    rc, err = run(capsys, "import", "--format", "hf-llava", "--src", str(bad), "--out", str(out), "--overwrite")
    assert rc == 2 and sorted(os.listdir(out)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["badsrc", "out"]


def test_reexport_leaves_one_set_of_weights(hf_dir, tmp_path, capsys):
    cli("import", "--format", "hf-llava", "--src", hf_dir, "--out", str(tmp_path / "ck"))
    out = str(tmp_path / "exp")
    cli("export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out", out, "--max-shard-size", "20KB")
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    rc, err = run(capsys, "export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out", out)
    assert rc == 2
    one_error_line(err, out, "--overwrite")
    cli("export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out", out, "--overwrite")
    weights = sorted(n for n in os.listdir(out) if n.endswith((".safetensors", ".bin", ".index.json")))
    assert weights == ["model.safetensors"]
    assert_same_tensors(tensors(hf_dir), tensors(out))
    # single -> sharded: no stale single file
    cli("export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out", out, "--overwrite",
        "--max-shard-size", "20KB")
    assert "model.safetensors" not in os.listdir(out)
    assert_same_tensors(tensors(hf_dir), tensors(out))


def _copy_with_weights(hf_dir: str, dst: str, data: bytes, name: str = "model.safetensors") -> str:
    os.makedirs(dst)
    for n in os.listdir(hf_dir):
        if not n.endswith(".safetensors"):
            with open(os.path.join(hf_dir, n), "rb") as f, open(os.path.join(dst, n), "wb") as g:
                g.write(f.read())
    with open(os.path.join(dst, name), "wb") as f:
        f.write(data)
    return dst


def test_corrupt_weight_files(hf_dir, tmp_path, capsys):
    raw = open(os.path.join(hf_dir, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    past = dict(header)
    past[key] = {**header[key], "data_offsets": [0, len(raw) * 2]}
    past_raw = json.dumps(past).encode()
    cases = {"header": raw[: 8 + n // 2], "data": raw[: len(raw) - 1000],
             "offsets": struct.pack("<Q", len(past_raw)) + past_raw + raw[8 + n:], "empty": b""}
    for what, data in cases.items():
        src = _copy_with_weights(hf_dir, str(tmp_path / what), data)
        rc, err = run(capsys, "import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / f"o-{what}"))
        assert rc == 2, (what, err)
        one_error_line(err, "model.safetensors")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/convert_pwned",))


def test_malicious_and_unreadable_pickles(hf_dir, tmp_path, capsys):
    hf = make_hf_llava(str(tmp_path / "hf"), "clip", "llama", -2, "default")
    save_original(hf, str(tmp_path / "orig"), "bin", True)
    evil = str(tmp_path / "evil")
    os.makedirs(evil)
    with open(os.path.join(tmp_path / "orig" / "config.json")) as f, open(os.path.join(evil, "config.json"), "w") as g:
        g.write(f.read())
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": Evil()}, os.path.join(evil, "pytorch_model.bin"))
    if os.path.exists("/tmp/convert_pwned"):
        os.remove("/tmp/convert_pwned")
    rc, err = run(capsys, "import", "--format", "llava", "--src", evil, "--out", str(tmp_path / "o1"))
    assert rc == 2 and not os.path.exists("/tmp/convert_pwned")
    one_error_line(err, "pytorch_model.bin", "weights_only=True")
    with open(os.path.join(evil, "pytorch_model.bin"), "wb") as f:
        f.write(b"\x00\x01 not a pickle at all" * 10)
    rc, err = run(capsys, "import", "--format", "llava", "--src", evil, "--out", str(tmp_path / "o2"))
    assert rc == 2
    one_error_line(err, "pytorch_model.bin")
    with open(os.path.join(evil, "pytorch_model.bin"), "wb") as f:
        pickle.dump([1, 2, 3], f)  # a pickle, but no dict of tensors
    rc, err = run(capsys, "import", "--format", "llava", "--src", evil, "--out", str(tmp_path / "o3"))
    assert rc == 2
    one_error_line(err, "pytorch_model.bin")


def test_bad_configs(hf_dir, tmp_path, capsys):
    src = _copy_with_weights(hf_dir, str(tmp_path / "cfg"), open(os.path.join(hf_dir, "model.safetensors"), "rb").read())
    with open(os.path.join(src, "config.json")) as f:
        good = json.load(f)
    with open(os.path.join(src, "config.json"), "w") as f:
        f.write('{"model_type": "llava", ')
    rc, err = run(capsys, "import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / "o1"))
    assert rc == 2
    one_error_line(err, "config.json")
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump({**good, "model_type": "my_llava"}, f)
    rc, err = run(capsys, "import", "--format", "hf-llava", "--src", src, "--out", str(tmp_path / "o2"))
    assert rc == 2
    one_error_line(err, "config.json", "my_llava")


def test_bad_options(hf_dir, tmp_path, capsys):
    rc, err = run(capsys, "import", "--format", "hf-llava", "--src", hf_dir, "--out", str(tmp_path / "o"),
                  "--dtype", "float7")
    assert rc == 2
    one_error_line(err, "--dtype", "float7")
    assert not os.path.exists(tmp_path / "o")
    cli("import", "--format", "hf-llava", "--src", hf_dir, "--out", str(tmp_path / "ck"))
    for opt, val in (("--max-shard-size", "lots"), ("--dtype", "int4")):
        rc, err = run(capsys, "export", "--format", "hf-llava", "--src", str(tmp_path / "ck"), "--out",
                      str(tmp_path / "e"), opt, val)
        assert rc == 2, opt
        one_error_line(err, opt, val)
    assert not os.path.exists(tmp_path / "e")
