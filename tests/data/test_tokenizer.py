"""Tokenizer loading: SentencePiece with the slow LlamaTokenizer's semantics, HF folders,
added tokens and the <image> token."""

import json
import pickle
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.llava_reference import SlowLlamaTokenizer
from tests.helpers.tiny_tokenizers import build_byte_bpe, train_llama_like_sentencepiece
from vlm_jax.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    add_image_token,
    image_token_id,
    load_tokenizer,
)

STRINGS = [
    "", "Hello world.", " leading space", "  two  spaces ", "trailing ", "\nnew line first", "a\n\nb",
    "USER: hi</s>USER: again", "x </s><s>[INST] y [/INST] z </s>", "</s>", "<s>text", "<unk> odd",
    "▁already▁underlined", "Ça va? 漢字 😀", "digits 12345 and 3.14", "\t tab",
]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    return train_llama_like_sentencepiece(str(tmp_path_factory.mktemp("sp")))


@pytest.mark.parametrize("legacy", [False, True])
def test_sentencepiece_equals_slow_llama_tokenizer(sp_model, legacy):
    ours = load_tokenizer(sp_model, legacy=legacy)
    ref = SlowLlamaTokenizer(sp_model, legacy=legacy)
    for text in STRINGS:
        assert ours.encode(text, add_bos=True) == ref(text).input_ids, text


_CHARS = st.sampled_from(list("ab cdUSER:\n\t▁é漢😀.1") + ["</s>", "<s>", "<unk>", "  "])


@pytest.fixture(scope="module")
def pairs(sp_model):
    return {legacy: (load_tokenizer(sp_model, legacy=legacy), SlowLlamaTokenizer(sp_model, legacy=legacy))
            for legacy in (False, True)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(_CHARS, max_size=20).map("".join), legacy=st.booleans())
def test_sentencepiece_equals_slow_llama_tokenizer_random(pairs, text, legacy):
    ours, ref = pairs[legacy]
    assert ours.encode(text, add_bos=True) == ref(text).input_ids
    ids, starts = ours.encode_with_offsets(text)
    assert len(ids) == len(starts)
    assert starts == sorted(starts) and all(0 <= s < max(len(text), 1) for s in starts)


def test_legacy_controls_the_space_after_special_tokens(sp_model):
    new, old = load_tokenizer(sp_model, legacy=False), load_tokenizer(sp_model, legacy=True)
    user = new.convert_tokens_to_ids("USER")
    assert new.encode("</s>USER") == [new.eos_id, user]
    assert old.encode("</s>USER") == [old.eos_id, old.convert_tokens_to_ids("▁"), user]


def test_decode_round_trip(sp_model):
    tok = load_tokenizer(sp_model)
    for text in ("Hello world.", "Ça va? 漢字 😀", "a\n\nb c"):
        assert tok.decode(tok.encode(text, add_bos=True)) == text
    assert tok.decode(tok.encode("a</s>"), skip_special_tokens=False) == "a</s>"


def test_folder_with_tokenizer_config(sp_model, tmp_path):
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    probe = load_tokenizer(str(tmp_path))
    n = probe.vocab_size
    assert isinstance(probe, SentencePieceTokenizer) and not probe.legacy
    assert (probe.bos_id, probe.eos_id, probe.pad_id) == (1, 2, 0)  # pad = unk, as LLaVA sets it
    cfg = {
        "legacy": True,
        "bos_token": {"content": "<s>", "__type": "AddedToken"},
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "added_tokens_decoder": {
            "0": {"content": "<unk>", "special": True},
            str(n): {"content": "<image>", "special": True},
            str(n + 1): {"content": "<pad>", "special": True},
        },
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(str(tmp_path))
    assert tok.legacy and tok.vocab_size == n + 2
    assert image_token_id(tok) == n and tok.pad_id == n + 1
    ids = tok.encode("a <image> b")
    assert n in ids and tok.id_to_piece(n) == "<image>"
    assert load_tokenizer(str(tmp_path), legacy=False).legacy is False
    # A config without "legacy" means the slow LlamaTokenizer's default, True.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert load_tokenizer(str(tmp_path)).legacy is True


def test_tokenizers_pickle(sp_model, tmp_path):
    # Grain may run the template in worker processes.
    for tok in (load_tokenizer(sp_model), load_tokenizer(build_byte_bpe(str(tmp_path), "qwen2"))):
        assert pickle.loads(pickle.dumps(tok)).encode("Hi </s> <|im_end|>") == tok.encode("Hi </s> <|im_end|>")


def test_add_image_token_sentencepiece(sp_model):
    tok = load_tokenizer(sp_model)
    n = tok.vocab_size
    assert image_token_id(tok) is None
    assert add_image_token(tok) == n and add_image_token(tok) == n
    assert tok.vocab_size == n + 1 and image_token_id(tok) == n
    assert tok.encode("x<image>y").count(n) == 1


def test_hf_folder(tmp_path):
    folder = build_byte_bpe(str(tmp_path), "qwen2")
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer) and tok.hf is not None
    assert tok.eos_id == tok.convert_tokens_to_ids("<|im_end|>") and tok.bos_id is None
    text = "<|im_start|>user\nHello world.<|im_end|>"
    ids, starts = tok.encode_with_offsets(text)
    assert ids == tok.encode(text) and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert starts == sorted(starts)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.image_chunks and image_token_id(tok) is None
    idx = add_image_token(tok)
    assert idx == tok.vocab_size - 1 and image_token_id(tok) == idx and not tok.image_chunks
    assert idx in tok.encode("a<image>b")


def test_missing_path():
    with pytest.raises(FileNotFoundError):
        load_tokenizer("/nonexistent/tokenizer")
