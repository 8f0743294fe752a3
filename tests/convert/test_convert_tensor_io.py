"""Streamed tensor IO: the hand-written safetensors shards are standard files; .bin is read safely."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open

from convert.files import parse_size
from convert.tensor_io import BinShardWriter, ShardedSafetensorsWriter, TensorReader, np_dtype


def sample() -> dict:
    rng = np.random.default_rng(0)
    return {"a.weight": rng.standard_normal((5, 3)).astype(np.float32),
            "b": rng.standard_normal((7,)).astype(np_dtype("bfloat16")),
            "c": np.arange(6, dtype=np.int64).reshape(2, 3),
            "d": rng.standard_normal((2, 2, 2)).astype(np.float16),
            "scalar": np.asarray(3.0, np.float32)}


def write(writer_cls, out: str, tensors: dict, shard: int, **kw):
    items = [(k, v.shape, v.dtype.name) for k, v in tensors.items()]
    w = writer_cls(out, items, max_shard_bytes=shard, **kw)
    for k in reversed(list(tensors)):  # order of writes need not follow the file layout
        w.write(k, tensors[k])
    w.close()


@pytest.mark.parametrize("shard", [10**9, 40])
def test_safetensors_writer(tmp_path, shard):
    t = sample()
    write(ShardedSafetensorsWriter, str(tmp_path), t, shard)
    index = tmp_path / "model.safetensors.index.json"
    assert index.exists() == (shard == 40)
    files = sorted(p for p in os.listdir(tmp_path) if p.endswith(".safetensors"))
    for f in files:
        with safe_open(str(tmp_path / f), "np") as h:  # the reference reader accepts the files
            assert h.metadata() == {"format": "pt"}
            for k in h.keys():
                np.testing.assert_array_equal(h.get_tensor(k), t[k])
    got = dict(TensorReader(str(tmp_path)).iter_tensors())
    assert sorted(got) == sorted(t)
    for k in t:
        assert got[k].dtype == t[k].dtype and got[k].tobytes() == t[k].tobytes()
    if shard == 40:
        assert set(json.loads(index.read_text())["weight_map"]) == set(t)


def test_writer_rejects_wrong_tensors(tmp_path):
    w = ShardedSafetensorsWriter(str(tmp_path), [("x", (2,), "float32")])
    with pytest.raises(ValueError, match="'x'"):
        w.write("x", np.zeros(3, np.float32))
    with pytest.raises(KeyError):
        w.write("y", np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="never written"):
        w.close()


@pytest.mark.parametrize("shard", [10**9, 40])
def test_bin_writer_and_reader(tmp_path, shard):
    t = sample()
    write(BinShardWriter, str(tmp_path), t, shard)
    assert (tmp_path / "pytorch_model.bin.index.json").exists() == (shard == 40)
    got = dict(TensorReader(str(tmp_path)).iter_tensors())
    for k in t:
        assert got[k].dtype == t[k].dtype and got[k].tobytes() == t[k].tobytes()


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/convert_test_pwned",))


def test_bin_reader_never_runs_pickled_code(tmp_path):
    path = str(tmp_path / "pytorch_model.bin")
    torch.save({"w": torch.zeros(2), "evil": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        list(TensorReader(path).iter_tensors())
    assert not os.path.exists("/tmp/convert_test_pwned")


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("100") == 100 and parse_size("1.5MB") == 1_500_000
    with pytest.raises(ValueError):
        parse_size("lots")
