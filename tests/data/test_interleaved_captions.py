"""COYO records with `caption_sequences`: every caption with its image is its own sequence, the ids and
labels of VILA-1.5's own LazyCoyoDataset + collator lines (tests/helpers/vila_coyo.py), each sequence its
own segment of the packed row (positions from 0, no target across sequences); without the option the
record stays one document."""

import json
import os

import numpy as np
import pytest

from tests.helpers import data as dh
from tests.helpers import recipes as rh
from tests.helpers import vila_coyo
from tests.helpers.llava_reference import SlowLlamaTokenizer
from vlm_jax.config import AlignGPTConfig, DataSourceConfig
from vlm_jax.data.errors import DataError
from vlm_jax.data.pipeline import DataLoader

CAPTIONS = ["A red square on white.", "Two blue shapes, side by side.", "A <image> tag, then green.",
            "Yellow\nsun over a hill."]
COYO = {"id": "coyo0", "text_list": CAPTIONS,
        "image_info": [{"image_name": f"{c}.png", "matched_text_index": i}
                       for i, c in enumerate(["red", "blue", "green", "yellow"])]}


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    from tests.helpers.tiny_tokenizers import train_llama_like_sentencepiece

    d = str(tmp_path_factory.mktemp("tok"))
    train_llama_like_sentencepiece(d)
    return d


def loader(tmp_path, sp_dir, records, caption_sequences=True, aligngpt=None, **kw):
    from vlm_jax.tokenizer import load_tokenizer

    images = os.path.join(tmp_path, "images")
    rh.write_images(images)
    path = os.path.join(tmp_path, "coyo.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    cfg = dh.data_config(path, images, **{"seq_len": 128, "max_images": 4, "shuffle": False, "packing": False, **kw})
    cfg.sources = [DataSourceConfig(path=path, image_folder=images, caption_sequences=caption_sequences)]
    return DataLoader(cfg, tokens_per_image=dh.N_IMG, image_token_id=dh.IMAGE_TOKEN, image_size=8,
                      image_mean=(0.5, 0.5, 0.5), tokenizer=load_tokenizer(sp_dir, legacy=False), batch_size=1,
                      aligngpt=aligngpt)


def vila_rows(sp_dir):
    """VILA-1.5's batch rows for the record (its shards hold {"caption", "image"} samples, 4 per item),
    image placeholders widened to N image tokens with IGNORE labels, as its model does."""
    tok = SlowLlamaTokenizer(os.path.join(sp_dir, "tokenizer.model"), legacy=False)
    item = vila_coyo.coyo_getitem([{"caption": c, "image": f"{i}"} for i, c in enumerate(CAPTIONS)], tok)
    batch = vila_coyo.collate([item], tok)
    rows = []
    for ids, labels, att in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
        n = sum(att)
        ids, labels = ids[:n], labels[:n]
        wide = [(dh.IMAGE_TOKEN, vila_coyo.IGNORE_INDEX)] * dh.N_IMG
        pairs = [q for t, lab in zip(ids, labels) for q in (wide if t == vila_coyo.IMAGE_TOKEN_INDEX else [(t, lab)])]
        rows.append(([t for t, _ in pairs], [lab for _, lab in pairs]))
    return rows, batch["image"]


def test_each_caption_is_vilas_sequence(tmp_path, sp_dir):
    want, images = vila_rows(sp_dir)
    assert len(want) == 4 and [len(im) for im in images] == [1, 1, 1, 1]  # 4 rows, one image each
    row = next(loader(tmp_path, sp_dir, [COYO]))
    seg, toks, pos = row["segment_ids"][0], row["tokens"][0], row["positions"][0]
    assert int(seg.max()) == 4 and int(row["image_mask"][0].sum()) == 4
    for s, (ids, labels) in enumerate(want, start=1):
        at = np.flatnonzero(seg == s)
        assert toks[at].tolist() == ids
        assert pos[at].tolist() == list(range(len(ids)))
        # the loss of position j is VILA's label of token j+1 (its shift); nothing across into the next sequence
        assert row["targets"][0][at][:-1].tolist() == ids[1:]
        assert row["loss_mask"][0][at].tolist() == [lab != vila_coyo.IGNORE_INDEX for lab in labels[1:]] + [False]
    # images in caption order
    centres = row["images"][0][:4, 0, 4, 4].astype(int)
    assert [min(rh.COLORS, key=lambda c: np.abs(x - rh.COLORS[c]).sum()) for x in centres] == [
        "red", "blue", "green", "yellow"]


def test_without_the_option_the_record_is_one_document(tmp_path, sp_dir):
    row = next(loader(tmp_path, sp_dir, [COYO], caption_sequences=False))
    assert int(row["segment_ids"][0].max()) == 1 and int(row["image_mask"][0].sum()) == 4


def test_budget_and_truncation_keep_whole_captions(tmp_path, sp_dir):
    want, _ = vila_rows(sp_dir)
    row = next(loader(tmp_path, sp_dir, [COYO], max_images=2))  # captions go with their images
    assert int(row["segment_ids"][0].max()) == 2 and int(row["image_mask"][0].sum()) == 2
    fit = len(want[0][0]) + len(want[1][0]) + 3  # two sequences and a bit of the third
    ld = loader(tmp_path / "t", sp_dir, [COYO], seq_len=fit)
    row = next(ld)
    seg = row["segment_ids"][0]
    assert int(seg.max()) == 2 and int((seg > 0).sum()) == fit - 3 and ld.stats()["truncated_examples"] == 1


def test_bad_records_and_options(tmp_path, sp_dir):
    two = dict(COYO, id="two", image_info=COYO["image_info"][:3] + [dict(COYO["image_info"][3], matched_text_index=0)])
    ld = loader(tmp_path, sp_dir, [two, COYO], num_epochs=1)
    rows = list(ld)
    assert len(rows) == 1 and ld.stats()["skipped_by_reason"] == {"malformed_record": 1}
    with pytest.raises(DataError, match="caption_sequences"):
        loader(tmp_path / "a", sp_dir, [COYO], aligngpt=AlignGPTConfig(enabled=True))
