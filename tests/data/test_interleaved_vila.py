"""MMC4 documents against VILA-1.5's own LazyMMC4Dataset lines (tests/helpers/vila_mmc4.py): the text,
`<image>\\n` before each matched sentence, and the ids and supervised tokens."""

import copy
import os

import numpy as np
import pytest

from tests.helpers import vila_coyo, vila_mmc4
from tests.helpers.llava_reference import SlowLlamaTokenizer
from vlm_jax.data import interleaved

RECORDS = [
    {"text_list": ["Intro text.", "A cat sits.", "The sky is <image> clear.", "Two dogs."],
     "image_info": [{"image_name": "b.png", "matched_text_index": 3}, {"image_name": "a.png", "matched_text_index": 1}]},
    {"text_list": ["Both here.", "Then plain text.", "And more."],
     "image_info": [{"image_name": "a.png", "matched_text_index": 0}, {"image_name": "b.png", "matched_text_index": 0}]},
]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    from tests.helpers.tiny_tokenizers import train_llama_like_sentencepiece
    from vlm_jax.tokenizer import load_tokenizer

    d = str(tmp_path_factory.mktemp("tok"))
    train_llama_like_sentencepiece(d)
    slow = SlowLlamaTokenizer(os.path.join(d, "tokenizer.model"), legacy=False)
    slow.pad_token = slow.unk_token  # LLaVA: tokenizer.pad_token = tokenizer.unk_token
    return load_tokenizer(d, legacy=False), slow


def vila(record, slow, after_image):
    text, images = vila_mmc4.mmc4_text(copy.deepcopy(record), slow, after_image)
    ids, labels = vila_mmc4.mmc4_ids(text, slow, vila_coyo.tokenizer_image_token, after_image)
    supervised = [lab not in (vila_coyo.IGNORE_INDEX, vila_coyo.IMAGE_TOKEN_INDEX) for lab in labels]
    return text, images, ids, supervised


@pytest.mark.parametrize("record", RECORDS)
def test_document_is_vilas_text_and_ids(record, toks):
    ours, slow = toks
    text, images, ids, supervised = vila(record, slow, after_image=False)
    doc, order = interleaved.parse_mmc4(record)
    assert "".join(s for s, _ in interleaved.render(doc, slow.eos_token)) == text
    assert interleaved.image_names(record, order) == images
    enc = interleaved.encode_document(doc, ours, "all")
    assert enc.tokens.tolist() == ids
    assert enc.label_mask[1:].tolist() == supervised[1:]  # VILA's BOS label is never a target after the shift


@pytest.mark.parametrize("record", RECORDS)
def test_after_image_supervises_vilas_tokens(record, toks):
    ours, slow = toks
    _, _, ids, supervised = vila(record, slow, after_image=True)
    enc = interleaved.encode_document(interleaved.parse_mmc4(record)[0], ours, "after_image")
    # VILA splits sentences with pad tokens in this mode (ours keeps the spaces); what is learned is the same
    assert enc.tokens[enc.label_mask].tolist() == np.asarray(ids)[np.asarray(supervised)].tolist()
