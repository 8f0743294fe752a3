"""The loader end to end: formats, resume, multi-process sharding, epochs, mixtures, truncation."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.data import (
    IMAGE_TOKEN,
    N_IMG,
    data_config,
    loader_kwargs,
    make_records,
    segments,
    toy_encode,
    write_images,
    write_json,
)
from vlm_jax.config import DataSourceConfig
from vlm_jax.data.pipeline import DataLoader


@pytest.fixture()
def dataset(tmp_path):
    write_images(str(tmp_path / "img"))
    recs = make_records(40)
    return str(write_json(str(tmp_path / "d.json"), recs)), str(tmp_path / "img"), recs


def example_keys(loader):
    """Token tuples of every segment the loader yields (identify examples)."""
    return [tuple(t.tolist()) for b in loader for t, _, _ in segments(b)]


def expected_keys(recs, **spec):
    from vlm_jax.data.examples import expand_images

    out = []
    for r in recs:
        t, m = toy_encode(r["conversations"])
        out.append(tuple(expand_images(t, m, N_IMG, IMAGE_TOKEN)[0].tolist()))
    return out


def test_one_epoch_yields_every_example_once(dataset):
    path, img, recs = dataset
    loader = DataLoader(data_config(path, img, num_epochs=1), **loader_kwargs())
    got = example_keys(loader)
    assert sorted(got) == sorted(expected_keys(recs))
    st = loader.stats()
    assert st["examples"] == len(recs) and st["skipped_examples"] == 0


def test_jsonl_and_array_record_sources_match_json(dataset, tmp_path):
    path, img, recs = dataset
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    from tools.prepare_data import convert

    convert(path, img, str(tmp_path / "ar"), shards=3, progress=False)
    ref = list(DataLoader(data_config(path, img, num_epochs=1), **loader_kwargs()))
    for src in [str(jsonl), str(tmp_path / "ar")]:
        cfg = data_config(src, img, num_epochs=1)
        got = list(DataLoader(cfg, **loader_kwargs()))
        assert len(got) == len(ref)
        if src.endswith("ar"):  # shards interleave records: same multiset, another order
            assert sorted(example_keys(got)) == sorted(example_keys(ref))
        else:
            for a, b in zip(got, ref):
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("packing", [True, False])
def test_resume_yields_the_same_batches(dataset, packing):
    path, img, _ = dataset
    cfg = data_config(path, img, num_epochs=3, packing=packing)
    full = list(DataLoader(cfg, **loader_kwargs()))
    for k in [0, 3, 7]:
        a = DataLoader(cfg, **loader_kwargs())
        for _ in range(k):
            next(a)
        state = json.loads(json.dumps(a.get_state()))
        b = DataLoader(cfg, **loader_kwargs())
        b.set_state(state)
        rest = list(b)
        assert len(rest) == len(full) - k
        for x, y in zip(rest, full[k:]):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])


def test_two_processes_split_the_dataset_exactly_once(dataset):
    path, img, recs = dataset
    cfg = data_config(path, img, num_epochs=1)
    keys = []
    for p in range(2):
        keys.append(example_keys(DataLoader(cfg, **loader_kwargs(), process_index=p, process_count=2)))
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(expected_keys(recs))
    assert abs(len(keys[0]) - len(keys[1])) <= 1


def test_epochs_reshuffle_and_seed_is_deterministic(dataset):
    path, img, recs = dataset
    cfg = data_config(path, img, num_epochs=2, packing=False)
    a = example_keys(DataLoader(cfg, **loader_kwargs()))
    b = example_keys(DataLoader(cfg, **loader_kwargs()))
    assert a == b and len(a) == 2 * len(recs)
    assert a[: len(recs)] != a[len(recs):] and sorted(a[: len(recs)]) == sorted(a[len(recs):])
    c = example_keys(DataLoader(dataclasses.replace(cfg, seed=1), **loader_kwargs()))
    assert c != a


def test_weighted_mixture_is_exact(tmp_path):
    write_images(str(tmp_path / "img"))
    recs = make_records(200)
    lang = [r for r in recs if "image" not in r]
    vis = [r for r in recs if "image" in r]
    srcs = [DataSourceConfig(path=write_json(str(tmp_path / "lang.json"), lang), weight=0.88),
            DataSourceConfig(path=write_json(str(tmp_path / "vis.json"), vis), image_folder=str(tmp_path / "img"),
                             weight=0.12)]
    cfg = dataclasses.replace(data_config("", "", packing=False, num_epochs=1), sources=srcs)
    loader = DataLoader(cfg, **loader_kwargs(batch_size=25))
    batch = next(loader)
    n_vis = int((batch["image_mask"].any(axis=1)).sum())
    assert n_vis == 3  # 12% of 25, rounded as Grain's exact interleave does
    assert len(example_keys(loader)) + 25 == len(lang) * 100 // 88
    by_src = loader.stats()["examples_by_source"]
    assert by_src["lang"] == len(lang) and by_src["vis"] == len(lang) * 12 // 88


def test_long_samples_truncate_or_drop(tmp_path):
    write_images(str(tmp_path / "img"))
    long = {"id": "long", "image": "img0.png", "conversations": [
        {"from": "human", "value": "<image>\n" + "q " * 10}, {"from": "gpt", "value": "a " * 100}]}
    path = write_json(str(tmp_path / "d.json"), [long])
    tr = DataLoader(data_config(path, str(tmp_path / "img"), num_epochs=1), **loader_kwargs())
    b = next(tr)
    assert (b["segment_ids"][0] == 1).all() and tr.stats()["truncated_examples"] == 1
    assert b["image_mask"][0].sum() == 1
    dr = DataLoader(data_config(path, str(tmp_path / "img"), num_epochs=1, too_long="drop"), **loader_kwargs())
    assert list(dr) == [] and dr.stats()["skipped_by_reason"] == {"too_long": 1}


def test_truncation_never_splits_an_image_run(tmp_path):
    write_images(str(tmp_path / "img"))
    rec = {"id": "x", "image": ["img0.png", "img1.png"], "conversations": [
        {"from": "human", "value": "hi <image> there " + "w " * 45 + "<image>"}, {"from": "gpt", "value": "ok " * 5},
        {"from": "human", "value": "more"}, {"from": "gpt", "value": "answer " * 30}]}
    path = write_json(str(tmp_path / "d.json"), [rec])
    b = next(DataLoader(data_config(path, str(tmp_path / "img"), num_epochs=1), **loader_kwargs()))
    n_ph = int((b["tokens"][0] == IMAGE_TOKEN).sum())
    assert n_ph % N_IMG == 0 and n_ph // N_IMG == b["image_mask"][0].sum()


def test_prepare_data_cli(dataset, tmp_path):
    path, img, recs = dataset
    out = subprocess.run([sys.executable, "-m", "tools.prepare_data", "--src", path, "--image-folder", img,
                          "--out", str(tmp_path / "o"), "--shards", "2", "--quiet"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["written"] == len(recs)
    bad = subprocess.run([sys.executable, "-m", "tools.prepare_data", "--src", path], capture_output=True)
    assert bad.returncode == 2


def test_two_processes_two_epochs_mixture_resume(tmp_path):
    """Sharding, mixing and resuming together: each epoch every record once over both processes."""
    write_images(str(tmp_path / "img"))
    recs = make_records(30)
    a, b = recs[:12], recs[12:]
    srcs = [DataSourceConfig(path=write_json(str(tmp_path / "a.json"), a), image_folder=str(tmp_path / "img")),
            DataSourceConfig(path=write_json(str(tmp_path / "b.json"), b), image_folder=str(tmp_path / "img"))]
    cfg = dataclasses.replace(data_config("", "", num_epochs=2), sources=srcs)
    keys = []
    for p in range(2):
        ld = DataLoader(cfg, **loader_kwargs(), process_index=p, process_count=2)
        first = [next(ld) for _ in range(2)]
        state = json.loads(json.dumps(ld.get_state()))
        ld2 = DataLoader(cfg, **loader_kwargs(), process_index=p, process_count=2)
        ld2.set_state(state)
        keys += example_keys(first) + example_keys(ld2)
    assert sorted(keys) == sorted(expected_keys(recs) * 2)


def test_infinite_weighted_mixture_keeps_going(tmp_path):
    write_images(str(tmp_path / "img"))
    recs = make_records(10)
    srcs = [DataSourceConfig(path=write_json(str(tmp_path / f"{n}.json"), recs[i::2]), weight=w,
                             image_folder=str(tmp_path / "img")) for i, (n, w) in enumerate([("x", 0.5), ("y", 0.5)])]
    cfg = dataclasses.replace(data_config("", "", packing=False), sources=srcs)
    ld = DataLoader(cfg, **loader_kwargs(batch_size=4), process_index=1, process_count=2)
    got = [next(ld) for _ in range(10)]  # 40 rows from 5 + 5 records: repeats forever
    assert ld.stats()["examples"] >= 40 and all(b["segment_ids"].max(axis=1).min() == 1 for b in got)


def test_array_record_bad_record_names_the_shard(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    from vlm_jax.data.errors import DataError
    from vlm_jax.data.sources import encode_record

    write_images(str(tmp_path / "img"))
    (tmp_path / "ar").mkdir()
    path = str(tmp_path / "ar" / "x-00000-of-00001.array_record")
    w = ArrayRecordWriter(path, "group_size:1")
    good = make_records(3, text_only_every=1)
    w.write(encode_record(good[0], []))
    w.write(b"garbage")
    w.write(encode_record(good[1], []))
    w.close()
    ld = DataLoader(data_config(str(tmp_path / "ar"), "", num_epochs=1), **loader_kwargs())
    list(ld)
    assert ld.stats()["examples"] == 2 and ld.stats()["skipped_by_reason"] == {"malformed_record": 1}
    with pytest.raises(DataError, match=r"x-00000-of-00001\.array_record: record 1 .*malformed_record"):
        list(DataLoader(data_config(str(tmp_path / "ar"), "", num_epochs=1, strict=True), **loader_kwargs()))


def test_prepare_data_skips_bad_records_or_stops_in_strict_mode(tmp_path):
    from tools.prepare_data import convert, main

    write_images(str(tmp_path / "img"))
    recs = make_records(6)
    recs[2] = {"id": "gone", "image": "missing.png", "conversations": recs[1]["conversations"]}
    path = write_json(str(tmp_path / "d.json"), recs)
    out = convert(path, str(tmp_path / "img"), str(tmp_path / "o"), shards=2, progress=False)
    assert out["written"] == 5 and out["skipped_by_reason"] == {"missing_image": 1}
    assert main(["--src", path, "--image-folder", str(tmp_path / "img"), "--out", str(tmp_path / "s"),
                 "--strict", "--quiet"]) == 1


@pytest.mark.parametrize("limit", [25, 1000])
def test_cached_examples_give_the_same_batches_and_skips(tmp_path, limit):
    """data.cache_examples: three epochs, some records cached (25 of 41) or all, a bad one among them;
    the same batches and skip counts, and records encoded once while the cache holds them."""
    write_images(str(tmp_path / "img"))
    recs = make_records(40) + [{"id": "bad", "image": "missing.png",
                                "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]
    path = str(write_json(str(tmp_path / "d.json"), recs))

    def loader(epochs, **kw):
        calls = []

        def counting_encode(conversations):
            calls.append(1)
            return toy_encode(conversations)

        return DataLoader(data_config(path, str(tmp_path / "img"), num_epochs=epochs, **kw),
                          **loader_kwargs(encode=counting_encode)), calls

    plain, plain_calls = loader(3)
    cached, cached_calls = loader(3, cache_examples=limit)
    want, got = list(plain), list(cached)
    assert len(got) == len(want)
    for x, y in zip(got, want):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert cached.stats() == plain.stats() and cached.stats()["skipped_by_reason"] == {"missing_image": 3}
    one_epoch, one_epoch_calls = loader(1)
    list(one_epoch)
    if limit >= len(recs):
        assert len(cached_calls) == len(one_epoch_calls)
    else:
        assert len(one_epoch_calls) < len(cached_calls) < len(plain_calls)
