"""Loader failures a user can act on: a byte-flipped ArrayRecord shard (named, or its bad record
skipped and counted), and data that yields nothing (stops with the skip counts instead of spinning)."""

import json
import os

import pytest

from tests.helpers.data import data_config, loader_kwargs, make_records, write_images, write_json
from tools.prepare_data import convert
from vlm_jax.data.errors import DataError, SourceError
from vlm_jax.data.pipeline import DataLoader


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    write_images(str(root / "img"))
    src = write_json(str(root / "d.json"), make_records(20))
    (path,) = convert(src, str(root / "img"), str(root / "out"), shards=1, progress=False)["shards"]
    return open(path, "rb").read()


def _flipped(tmp_path, data: bytes, pos: int) -> str:
    out = tmp_path / f"flip{pos}"
    out.mkdir()
    b = bytearray(data)
    b[pos] ^= 0xFF
    (out / "d-00000-of-00001.array_record").write_bytes(bytes(b))
    return str(out)


@pytest.mark.parametrize("strict", [False, True])
def test_byte_flipped_shard_is_named_or_its_record_skipped(tmp_path, shard, strict):
    seen = set()
    for pos in (100, 5000, len(shard) // 2):
        folder = _flipped(tmp_path, shard, pos)
        try:
            ld = DataLoader(data_config(folder, "", num_epochs=1, strict=strict), **loader_kwargs())
            list(ld)
        except SourceError as e:  # the shard's index itself is damaged: nothing in it can be trusted
            assert "d-00000-of-00001.array_record" in str(e) and "corrupt" in str(e), e
            seen.add("shard")
            continue
        except DataError as e:
            assert strict and "d-00000-of-00001.array_record: record" in str(e) and "corrupt_record" in str(e), e
            seen.add("record")
            continue
        st = ld.stats()
        assert st["examples"] + st["skipped_examples"] == 20
        if st["skipped_examples"]:
            assert not strict and set(st["skipped_by_reason"]) == {"corrupt_record"}
            seen.add("record")
    assert seen == {"shard", "record"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("epochs", [None, 3])
def test_all_bad_records_stop_with_the_skip_counts(tmp_path, epochs):
    """Read again and again, an epoch of nothing would spin forever; a single epoch just ends (stats
    has the counts)."""
    recs = [{"id": i, "conversations": "not a list"} for i in range(25)] + \
           [{"id": "m", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                               {"from": "gpt", "value": "a"}]}]
    path = write_json(str(tmp_path / "bad.json"), recs)
    ld = DataLoader(data_config(path, str(tmp_path), num_epochs=epochs), **loader_kwargs())
    with pytest.raises(DataError) as e:
        next(ld)
    msg = str(e.value)
    assert "26 records in a row" in msg and "malformed_record: 25" in msg and "missing_image: 1" in msg, msg
    assert ld.stats()["skipped_examples"] == 26
    once = DataLoader(data_config(path, str(tmp_path), num_epochs=1), **loader_kwargs())
    assert list(once) == [] and once.stats()["skipped_by_reason"] == {"malformed_record": 25, "missing_image": 1}


@pytest.mark.timeout(120)
def test_a_long_run_of_bad_records_stops_at_the_limit(tmp_path):
    write_images(str(tmp_path / "img"))
    recs = make_records(40)
    for i in range(10, 30):
        recs[i] = {"id": i, "conversations": "not a list"}
    path = write_json(str(tmp_path / "d.json"), recs)
    kw = dict(num_epochs=1, shuffle=False, packing=False)
    with pytest.raises(DataError, match="8 records in a row .*data.max_consecutive_skips"):
        list(DataLoader(data_config(path, str(tmp_path / "img"), max_consecutive_skips=8, **kw), **loader_kwargs()))
    ld = DataLoader(data_config(path, str(tmp_path / "img"), max_consecutive_skips=21, **kw), **loader_kwargs())
    list(ld)  # 20 in a row is under the limit; the counter restarts at every good record
    assert ld.stats()["examples"] == 20 and ld.stats()["skipped_examples"] == 20
    state = json.loads(json.dumps(ld.get_state()))
    assert "skips_in_row" in state


def test_unusable_sources_are_source_errors(tmp_path):
    bad_utf8 = tmp_path / "bad.json"
    bad_utf8.write_bytes(b'[{"id": 1, \xff\xfe')
    for path in (str(bad_utf8), str(tmp_path / "missing.json")):
        with pytest.raises(SourceError, match=os.path.basename(path)):
            DataLoader(data_config(path, ""), **loader_kwargs())
    with pytest.raises(SourceError, match="too_long"):
        DataLoader(data_config(str(bad_utf8), "", too_long="foo"), **loader_kwargs())
