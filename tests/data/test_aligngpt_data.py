"""AlignGPT data side: the indicator placeholder after BOS, `align_level` per row, pretraining levels."""

from __future__ import annotations

import numpy as np

from tests.helpers.data import (
    IMAGE_TOKEN,
    MARKER,
    N_IMG,
    data_config,
    loader_kwargs,
    make_records,
    toy_encode,
    write_images,
    write_json,
)
from vlm_jax.config import AlignGPTConfig
from vlm_jax.data import aligngpt
from vlm_jax.data.examples import expand_images
from vlm_jax.data.pipeline import DataLoader

IND = -300
ALIGN = AlignGPTConfig(enabled=True, indicator_token_id=IND)


def expected(rec, level):
    t, m = toy_encode(rec["conversations"])
    t, m = aligngpt.insert_indicator(t, m, level, IND)
    return tuple(expand_images(t, m, N_IMG, IMAGE_TOKEN)[0].tolist())


def segments_with_levels(loader):
    for b in loader:
        for r in range(b["tokens"].shape[0]):
            seg = b["segment_ids"][r]
            for s in range(1, int(seg.max(initial=0)) + 1):
                idx = np.flatnonzero(seg == s)
                yield b["tokens"][r, idx], b["align_level"][r, idx], b["loss_mask"][r, idx]


def load(tmp_path, recs, **kw):
    write_images(str(tmp_path / "img"))
    path = write_json(str(tmp_path / "d.json"), recs)
    cfg = data_config(path, str(tmp_path / "img"), num_epochs=1, shuffle=False, **kw)
    return DataLoader(cfg, aligngpt=ALIGN, **loader_kwargs(batch_size=2))


def test_pretraining_levels_from_the_record_and_no_indicator_for_text_only(tmp_path):
    recs = make_records(24, max_images=1, text_only_every=3)
    for i, r in enumerate(recs):
        if "image" in r:
            r["similarity"] = i % 8
    want = {expected(r, r["similarity"] if "image" in r else -1): r for r in recs}
    loader = load(tmp_path, recs, align_level_field="similarity")
    seen = 0
    for toks, levels, loss_mask in segments_with_levels(loader):
        rec = want[tuple(toks.tolist())]
        if "image" in rec:
            assert toks[1] == IND and levels[1] == rec["similarity"]
            assert not loss_mask[0] and not loss_mask[1]  # nothing predicts or is predicted from the indicator slot
            assert (np.delete(levels, 1) == -1).all()
        else:
            assert IND not in toks and (levels == -1).all()
        seen += 1
    assert seen == len(recs) and loader.stats()["skipped_examples"] == 0


def test_sft_uses_the_gate_level_and_bad_levels_are_skipped(tmp_path):
    recs = make_records(12, max_images=1, text_only_every=4)
    gate = [lv[1] for t, lv, _ in segments_with_levels(load(tmp_path / "a", recs)) if IND in t]
    assert gate and set(gate) == {ALIGN.num_indicators}

    with_image = [r for r in recs if "image" in r]
    for r in with_image:
        r["similarity"] = 7
    for r, bad in zip(with_image, [None, 8, -1, "3", 2.0, True]):
        r.pop("similarity") if bad is None else r.update(similarity=bad)
    loader = load(tmp_path / "b", recs, align_level_field="similarity", strict=False)
    list(loader)
    assert loader.stats()["skipped_by_reason"] == {"malformed_record": 6}


def test_truncation_that_cuts_the_image_drops_the_indicator(tmp_path):
    long_q = " ".join(f"w{i}" for i in range(30))
    recs = [{"id": "t", "image": "img0.png", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "a b c"},
        {"from": "human", "value": long_q + " <image>"}, {"from": "gpt", "value": "x"}]}]
    (toks, levels, _), = segments_with_levels(load(tmp_path, recs, seq_len=20))
    assert IND not in toks and MARKER not in toks and IMAGE_TOKEN not in toks and (levels == -1).all()
    assert len(toks) == 19  # cut at 20, then the indicator went


def test_inference_prompt_has_the_indicator_after_bos_only_with_images(tmp_path):
    import dataclasses

    from infer.runner import Loaded, prompt_ids
    from tests.helpers.infer_tiny import IMAGE_ID, write_tokenizer
    from vlm_jax.config import ModelConfig
    from vlm_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(write_tokenizer(str(tmp_path / "tok")))
    cfg = ModelConfig(image_token_id=IMAGE_ID, aligngpt=ALIGN)
    m = Loaded(params={}, cfg=cfg, tokenizer=tok, aspect="pad", name="t")
    with_image = prompt_ids(m, "vicuna_v1", "what is in this image ?", 1)
    assert with_image[0] == 1 and with_image[1] == IND and (with_image == IND).sum() == 1
    assert (with_image == IMAGE_ID).sum() == 576
    assert IND not in prompt_ids(m, "vicuna_v1", "what is in this image ?", 0)
    plain = prompt_ids(dataclasses.replace(m, cfg=ModelConfig(image_token_id=IMAGE_ID)), "vicuna_v1", "what ?", 1)
    np.testing.assert_array_equal(np.delete(with_image, 1)[:3], plain[:3])
