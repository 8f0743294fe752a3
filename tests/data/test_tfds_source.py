"""format: tfds - datasets prepared by a TFDS builder (ArrayRecord, no network, no TensorFlow) feed
the Grain pipeline like the other sources: the same examples as the LLaVA JSON they came from,
mixing, per-process sharding, clear errors."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.data import data_config, loader_kwargs, make_records, segments, write_images, write_json
from vlm_jax.config import DataSourceConfig
from vlm_jax.data.errors import DataError
from vlm_jax.data.pipeline import DataLoader
from vlm_jax.data.sources import open_source

pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    write_images(str(root / "img"))
    recs = make_records(30)
    path = write_json(str(root / "d.json"), recs)
    # prepared in another process: the reader never imports the builders (as in real use)
    subprocess.run([sys.executable, "-m", "tests.helpers.tfds_builders", str(root / "tfds"), path, str(root / "img")],
                   check=True, capture_output=True, timeout=300)
    return root, path, recs


def _examples(loader):
    return sorted((tuple(t.tolist()), np.asarray(im).tobytes()) for b in loader for t, _, im in segments(b))


def _tfds(root, name, **kw):
    return DataSourceConfig(path=name, format="tfds", data_dir=str(root / "tfds"), **kw)


def test_tfds_source_yields_the_examples_of_its_json(prepared):
    root, path, recs = prepared
    ref = _examples(DataLoader(data_config(path, str(root / "img"), num_epochs=1), **loader_kwargs()))
    cfg = dataclasses.replace(data_config("", "", num_epochs=1), sources=[_tfds(root, "llava_style")])
    loader = DataLoader(cfg, **loader_kwargs())
    assert _examples(loader) == ref  # tokens and image pixels
    assert loader.stats()["skipped_examples"] == 0 and loader.stats()["examples"] == len(recs)
    import sys as _sys

    assert "tensorflow" not in _sys.modules


def test_vqa_fields_split_slicing_mixing_and_two_processes(prepared):
    root, path, recs = prepared
    src = open_source(_tfds(root, "vqa_style", split="train[:50%]"))
    assert len(src) == 6
    from vlm_jax.data.sources import parse_record

    rec = parse_record(src[0])
    assert rec.conversations[0]["value"].startswith("<image>\nwhat is v") and rec.conversations[1]["from"] == "gpt"
    assert len(rec.image_bytes) == 1 and isinstance(rec.fields["score"], float)
    assert len(open_source(_tfds(root, "vqa_style", split="test"))) == 4

    sources = [_tfds(root, "vqa_style"), DataSourceConfig(path=path, image_folder=str(root / "img"))]
    cfg = dataclasses.replace(data_config("", "", num_epochs=1, packing=False), sources=sources)
    whole = _examples(DataLoader(cfg, **loader_kwargs()))
    parts = [_examples(DataLoader(cfg, **loader_kwargs(), process_index=p, process_count=2)) for p in range(2)]
    assert sorted(parts[0] + parts[1]) == whole and len(whole) == 12 + len(recs)
    assert abs(len(parts[0]) - len(parts[1])) <= 1

    weighted = [dataclasses.replace(sources[0], weight=1.0), dataclasses.replace(sources[1], weight=1.0)]
    loader = DataLoader(dataclasses.replace(cfg, sources=weighted), **loader_kwargs(batch_size=8))
    next(loader)
    by = loader.stats()["examples_by_source"]
    assert by["vqa_style"] == by["d"] == 4


def test_tfds_errors_name_the_dataset(prepared):
    root, _, _ = prepared
    with pytest.raises(DataError, match="no_such_set"):
        open_source(_tfds(root, "no_such_set"))
    with pytest.raises(DataError, match="vqa_style.*nosplit"):
        open_source(_tfds(root, "vqa_style", split="nosplit"))
