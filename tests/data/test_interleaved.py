"""VILA-style interleaved data: MMC4 documents, loss only after images, images kept in place, packing."""

import json
import os

import numpy as np
import pytest

from tests.helpers import data as dh
from tests.helpers import recipes as rh
from vlm_jax.data import interleaved
from vlm_jax.data.errors import DataError, SkipExample
from vlm_jax.data.pipeline import DataLoader, default_encode
from vlm_jax.data.sources import RawRecord, parse_record


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tests.helpers.tiny_tokenizers import train_llama_like_sentencepiece
    from vlm_jax.tokenizer import load_tokenizer

    return load_tokenizer(train_llama_like_sentencepiece(str(tmp_path_factory.mktemp("tok"))))


DOC = {"id": "d", "text_list": ["Intro text.", "A cat sits.", "The sky is clear.", "Two dogs."],
       "image_info": [{"image_name": "b.png", "matched_text_index": 3},
                      {"image_name": "a.png", "matched_text_index": 1},
                      {"image_name": "c.png", "matched_text_index": 3}]}


def test_mmc4_images_go_before_their_sentence_in_text_order():
    rec = parse_record(RawRecord("f", 0, json.dumps(DOC).encode()))
    assert rec.conversations == interleaved.Document(tuple(DOC["text_list"]), (0, 1, 0, 2))
    assert rec.image_paths == ["a.png", "b.png", "c.png"]  # sorted by sentence, ties in listed order
    segs = interleaved.render(rec.conversations, "</s>", "after_image")
    assert "".join(s for s, _ in segs) == ("Intro text.<image>\nA cat sits. The sky is clear."
                                           "<image>\n<image>\nTwo dogs.</s>")
    assert [sup for _, sup in segs] == [False, True, False, True, True]
    assert all(sup for _, sup in interleaved.render(rec.conversations, "</s>", "all"))


@pytest.mark.parametrize("bad", [
    {"text_list": []}, {"text_list": ["a"], "image_info": [{"image_name": "x", "matched_text_index": 1}]},
    {"text_list": ["a"], "image_info": [{"matched_text_index": 0}]}, {"text_list": "a b"}])
def test_malformed_documents_are_skipped(bad):
    with pytest.raises(SkipExample) as e:
        parse_record(RawRecord("f", 0, bad))
    assert e.value.reason == "malformed_record"


def test_loss_only_on_text_that_follows_an_image(tok):
    doc, _ = interleaved.parse_mmc4(DOC)
    both = {m: interleaved.encode_document(doc, tok, m) for m in interleaved.LOSS_MODES}
    assert np.array_equal(both["all"].tokens, both["after_image"].tokens)  # only the mask differs
    enc = both["after_image"]
    assert enc.tokens[0] == tok.bos_id and enc.tokens[-1] == tok.eos_id and enc.num_images == 3
    assert not enc.label_mask[enc.tokens == -200].any()
    said = tok.decode(enc.tokens[enc.label_mask], skip_special_tokens=False)
    assert said.replace(" ", "") == "\nAcatsits.\n\nTwodogs.</s>"
    full = tok.decode(both["all"].tokens[both["all"].label_mask], skip_special_tokens=False)
    assert full.replace(" ", "") == "Introtext.\nAcatsits.Theskyisclear.\n\nTwodogs.</s>"


def _loader(tmp_path, tok, records, **kw):
    images = os.path.join(tmp_path, "images")
    rh.write_images(images)
    path = os.path.join(tmp_path, "docs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    cfg = dh.data_config(path, images, **{"seq_len": 96, "max_images": 4, "shuffle": False, **kw})
    return DataLoader(cfg, tokens_per_image=dh.N_IMG, image_token_id=dh.IMAGE_TOKEN, image_size=8,
                      image_mean=(0.5, 0.5, 0.5), tokenizer=tok, batch_size=2)


def _colour(crops) -> str:
    centre = crops[0, 4, 4].astype(int)
    return min(rh.COLORS, key=lambda n: np.abs(centre - rh.COLORS[n]).sum())


def test_documents_pack_with_their_images_in_order(tmp_path, tok):
    docs = [rh.mmc4_doc(i, c, d) for i, (c, d) in enumerate([("red", "blue"), ("green", "yellow")] * 3)]
    loader = _loader(tmp_path, tok, docs, interleaved_loss="after_image", seq_len=112)
    batch = next(loader)
    assert batch["segment_ids"].max() >= 2  # several documents share a row
    for toks, mask, imgs in dh.segments(batch):
        is_img = toks == dh.IMAGE_TOKEN
        assert len(imgs) == 2 and int(is_img.sum()) == 2 * dh.N_IMG
        # images follow the text order (the listed order of image_info is the reverse)
        assert [_colour(im) for im in imgs] in (["red", "blue"], ["green", "yellow"])
        first = int(np.flatnonzero(is_img)[0])
        assert not mask[:first].any() and mask[first:].any()  # nothing before the first image is supervised
    stats = loader.stats()
    assert stats["skipped_examples"] == 0 and stats["images"] >= 4


def test_images_beyond_max_images_are_dropped_not_the_document(tmp_path, tok):
    loader = _loader(tmp_path, tok, [DOC | {"image_info": [dict(i, image_name="red.png") for i in DOC["image_info"]]}],
                     max_images=2, packing=False)
    toks, _, imgs = next(dh.segments(next(loader)))
    assert len(imgs) == 2 and int((toks == dh.IMAGE_TOKEN).sum()) == 2 * dh.N_IMG


def test_text_only_document_has_nothing_to_learn_after_images(tmp_path, tok):
    loader = _loader(tmp_path, tok, [{"text_list": ["No pictures here."]}, rh.mmc4_doc(0, "red", "blue")],
                     interleaved_loss="after_image", num_epochs=1)
    list(loader)
    assert loader.stats()["skipped_by_reason"] == {"no_supervised_tokens": 1}


def test_conversations_keep_images_in_place_when_asked(tmp_path, tok):
    rec = {"id": "p", "image": ["red.png", "blue.png"], "conversations": [
        {"from": "human", "value": "First <image> then <image> now?"}, {"from": "gpt", "value": "Red, blue."}]}
    for in_place in (False, True):
        cfg = dh.data_config("x.json", "", template="vicuna_v1", images_in_place=in_place)
        toks, _ = default_encode(cfg, tok)(rec["conversations"])
        where = np.flatnonzero(toks == -200)
        between = tok.decode(toks[where[0] + 1 : where[1]])
        assert ("then" in between) == in_place, between  # LLaVA's default moves both images to the front


def test_unknown_interleaved_loss_fails_at_construction(tmp_path, tok):
    with pytest.raises(DataError, match="interleaved_loss"):
        _loader(tmp_path, tok, [DOC], interleaved_loss="sometimes")



def test_documents_survive_prepare_data_to_array_record(tmp_path, tok):
    from tools.prepare_data import convert

    docs = [DOC | {"image_info": [dict(i, image_name=f"{c}.png") for i, c in zip(DOC["image_info"], rh.COLORS)]},
            rh.mmc4_doc(1, "green", "yellow")]
    plain = _loader(tmp_path, tok, docs, packing=False)
    out = convert(os.path.join(tmp_path, "docs.jsonl"), os.path.join(tmp_path, "images"), str(tmp_path / "ar"),
                  shards=1, progress=False)
    assert out["written"] == 2
    cfg = dh.data_config(str(tmp_path / "ar"), "", seq_len=96, max_images=4, shuffle=False, packing=False)
    embedded = DataLoader(cfg, tokens_per_image=dh.N_IMG, image_token_id=dh.IMAGE_TOKEN, image_size=8,
                          image_mean=(0.5, 0.5, 0.5), tokenizer=tok, batch_size=2)
    a, b = next(plain), next(embedded)
    for k in ("tokens", "loss_mask", "images", "image_mask"):
        assert np.array_equal(a[k], b[k]), k
