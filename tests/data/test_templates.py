"""Chat templates: ids and loss masks equal LLaVA's preprocessing (vicuna_v1, llava_llama_2,
mistral_instruct, plain) driven by SentencePiece, and HF apply_chat_template (chatml, llama_3)."""

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.llava_reference import SlowLlamaTokenizer, llava_encode
from tests.helpers.tiny_tokenizers import build_byte_bpe, train_llama_like_sentencepiece
from vlm_jax.data import templates as T
from vlm_jax.tokenizer import add_image_token, load_tokenizer


def H(v):
    return {"from": "human", "value": v}


def G(v):
    return {"from": "gpt", "value": v}


CONVS = {
    "single_image": [H("What is in the image?\n<image>"), G("A cat sits on the mat.")],
    "multi_turn": [
        H("<image>\nDescribe the picture in detail."), G("Two people walk on the beach at sunset."),
        H("Is it sunny?"), G("Yes, the sky is clear.\nNo clouds."),
        H("How many birds are there?"), G("There are 12 birds."),
    ],
    "multi_image": [
        H("Compare both images. <image>"), G("The first one shows a city at night."),
        H("<image> And this one?"), G("A bowl of fruit."),
    ],
    "text_only": [
        H("Translate to French: the house is blue."), G("La maison est bleue."),
        H("Ça va? 漢字 😀 and   spaces"), G("  Oui, ça va très bien!  "),
        H("Write a short poem about the sea."), G("Waves\n\nand  wind\tat 3 am."),
    ],
    "first_turn_from_gpt": [G("ignored"), H("<image>\nWhat color is the car?"), G("The car is red.")],
}


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sp"))
    train_llama_like_sentencepiece(d)
    return d


@pytest.fixture(scope="module")
def sp(sp_dir):
    """(ours, LLaVA's slow tokenizer) for legacy=False and legacy=True."""
    model = f"{sp_dir}/tokenizer.model"
    return {
        legacy: (load_tokenizer(sp_dir, legacy=legacy), SlowLlamaTokenizer(model, legacy=legacy))
        for legacy in (False, True)
    }


def _check_against_llava(conv, template, ours, ref, several_images_per_message=False):
    has_image = any("<image>" in m["value"] for m in conv)
    ids, mask, mismatch = llava_encode(conv, template, ref, has_image, several_images_per_message)
    assert not mismatch, "LLaVA itself reports a tokenization mismatch: the case proves nothing"
    enc = T.encode(conv, template, ours)
    assert enc.tokens.dtype == np.int32 and enc.label_mask.dtype == np.bool_
    assert enc.tokens.tolist() == ids
    assert enc.label_mask.tolist() == mask
    kept = conv[1:] if conv[0]["from"] == "gpt" else conv
    counts = [m["value"].count("<image>") for m in kept]
    assert enc.num_images == (sum(counts) if several_images_per_message else sum(c > 0 for c in counts))
    return enc


# vicuna_v1 / llava_llama_2 use the Vicuna-1.5 tokenizer setting (legacy=False); LLaVA-1.6's
# mistral_instruct multi-turn bookkeeping only holds with a legacy=True tokenizer (Mistral's).
TEMPLATE_LEGACY = [("vicuna_v1", False), ("llava_llama_2", False), ("mistral_instruct", True)]


@pytest.mark.parametrize("template,legacy", TEMPLATE_LEGACY)
@pytest.mark.parametrize("case", sorted(CONVS))
def test_matches_llava_preprocess(sp, template, legacy, case):
    ours, ref = sp[legacy]
    enc = _check_against_llava(CONVS[case], template, ours, ref)
    assert enc.label_mask.any() and not enc.label_mask[0]
    assert enc.tokens[0] == ours.bos_id


@pytest.mark.parametrize("template,legacy", TEMPLATE_LEGACY)
def test_several_images_in_one_message_keep_order(sp, template, legacy):
    # LLaVA-1.5 keeps one <image> per message; ours keeps all, moved to the front in order.
    ours, ref = sp[legacy]
    conv = [H("First <image> then <image> now"), G("Two images."), H("<image>Third."), G("Ok.")]
    enc = _check_against_llava(conv, template, ours, ref, several_images_per_message=True)
    assert enc.num_images == 3


def test_supervised_text_is_the_answers(sp):
    ours, _ = sp[False]
    conv = CONVS["multi_turn"]
    for template, end in (("vicuna_v1", "</s>"), ("llava_llama_2", " </s>")):
        enc = T.encode(conv, template, ours)
        got = ours.decode(enc.tokens[enc.label_mask], skip_special_tokens=False)
        assert got.replace(" ", "") == "".join(m["value"] + end for m in conv[1::2]).replace(" ", "")


@pytest.mark.parametrize("case", ["single_image", "first_turn_from_gpt"])
def test_plain_matches_llava(sp, case):
    ours, ref = sp[False]
    conv = CONVS[case][-2:]
    enc = _check_against_llava(conv, "plain", ours, ref)
    # BOS and image masked; caption and the trailing "\n" supervised.
    assert enc.label_mask.tolist() == [False, False] + [True] * (len(enc.tokens) - 2)
    assert ours.decode(enc.tokens[2:]) == conv[1]["value"] + "\n"


def test_plain_generalises_to_text_only_and_several_images(sp):
    ours, _ = sp[False]
    text_only = T.encode([H("no image here"), G("A caption.")], "plain", ours)
    cap = ours.encode("A caption.\n")
    assert text_only.tokens.tolist() == [ours.bos_id] + cap
    assert text_only.label_mask.tolist() == [False] + [True] * len(cap)
    two = T.encode([H("<image> and <image>"), G("A caption.")], "plain", ours)
    assert two.tokens.tolist()[:3] == [ours.bos_id, T.IMAGE_MARKER, T.IMAGE_MARKER]


_WORD = st.sampled_from(
    ["cat", "the", "USER", "ASSISTANT", "image", "12", "a", "Ça", "漢字", "😀", ".", ",", "?", "!", "\n", "red",
     "sky", "[INST]", "[/INST]", "</s>", "<<SYS>>", "ASSISTANT:", "city", "night", "–", "fruit", "x"]
)
_SEP = st.sampled_from([" ", " ", " ", "  ", "\n", ""])
_TEXT = st.lists(st.tuples(_WORD, _SEP), min_size=1, max_size=8).map(lambda ws: "".join(a + b for a, b in ws))


@st.composite
def _conversations(draw):
    n = draw(st.integers(1, 3))
    conv = []
    for _ in range(n):
        q = draw(_TEXT)
        if draw(st.booleans()):
            q = q + " <image>" if draw(st.booleans()) else "<image>\n" + q
        conv += [H(q), G(draw(_TEXT))]
    return [m for m in conv if m["value"].strip() and m["value"].replace("<image>", "").strip()]


# LLaVA finds rounds by splitting the prompt on these strings; inside a message they make it
# mis-mask silently or flag a mismatch (see test_separator_inside_a_message_...).
_SEPARATORS = {"vicuna_v1": ("ASSISTANT:", "</s>"), "llava_llama_2": ("[/INST]", "</s>"),
               "mistral_instruct": ("[/INST]", "</s>")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=_conversations(), choice=st.sampled_from(TEMPLATE_LEGACY))
def test_random_conversations_match_llava(sp, conv, choice):
    template, legacy = choice
    roles = [m["from"] for m in conv]
    if not conv or roles != ["human", "gpt"] * (len(conv) // 2):
        return
    ours, ref = sp[legacy]
    has_image = any("<image>" in m["value"] for m in conv)
    ids, mask, mismatch = llava_encode(conv, template, ref, has_image)
    enc = T.encode(conv, template, ours)
    assert enc.tokens.tolist() == ids
    if not any(sep in m["value"] for m in conv for sep in _SEPARATORS[template]):
        assert not mismatch
        assert enc.label_mask.tolist() == mask
    assert enc.label_mask.sum() > 0  # never the "mask everything" outcome


def test_separator_inside_a_message_does_not_confuse_the_mask(sp):
    # LLaVA splits "... USER: see ASSISTANT: x ASSISTANT: answer" on " ASSISTANT: " and masks
    # the wrong tokens; spans come from the messages here, so only the answer is supervised.
    ours, ref = sp[False]
    conv = [H("What does ASSISTANT: mean here?"), G("It is a role tag.")]
    ids, mask, mismatch = llava_encode(conv, "vicuna_v1", ref, False)
    enc = T.encode(conv, "vicuna_v1", ours)
    assert enc.tokens.tolist() == ids and enc.label_mask.tolist() != mask
    assert ours.decode(enc.tokens[enc.label_mask], skip_special_tokens=False) == "It is a role tag.</s>"


# --- inference prompts ------------------------------------------------------------------


@pytest.mark.parametrize("template,conv_factory", [
    ("vicuna_v1", "vicuna"), ("llava_llama_2", "llama_2"), ("mistral_instruct", "mistral")])
def test_generation_prompt_is_llava_get_prompt(sp, template, conv_factory):
    from tests.helpers import llava_reference as R

    ours, ref = sp[False]
    conv = CONVS["multi_turn"][:3]
    ref_conv = {"vicuna": R.conv_vicuna_v1, "llama_2": R.conv_llava_llama_2, "mistral": R.conv_mistral_instruct}[
        conv_factory]()
    moved = R.preprocess_multimodal([[dict(m) for m in conv]])[0]
    for i, m in enumerate(moved):
        ref_conv.append_message(ref_conv.roles[i % 2], m["value"])
    ref_conv.append_message(ref_conv.roles[1], None)
    prompt = ref_conv.get_prompt()
    assert T.render_prompt(conv, template, ours) == prompt
    # Prefill ids are a prefix of the training ids of the answered conversation.
    ids = T.generation_prompt(conv, template, ours)
    full = T.encode(CONVS["multi_turn"][:4], template, ours)
    assert full.tokens[: len(ids)].tolist() == ids.tolist()
    assert not full.label_mask[len(ids) - 1] and full.label_mask[len(ids)]  # the new answer starts there


def test_stop_strings_and_ids(sp):
    ours, _ = sp[False]
    assert T.stop_strings("vicuna_v1", ours) == ("</s>",)
    assert T.stop_token_ids("vicuna_v1", ours) == (ours.eos_id,)
    assert T.stop_strings("plain") == ("\n",)
    assert T.stop_strings("chatml") == ("<|im_end|>",)
    assert T.stop_strings("llama_3") == ("<|eot_id|>",)


def test_bad_conversations_raise(sp):
    ours, _ = sp[False]
    for bad in ([], [G("only an answer")], [H("q"), H("q again")], [H("q"), G("")], [{"from": "x", "value": "q"}],
                [H("q"), {"from": "gpt", "value": None}]):
        with pytest.raises(T.TemplateError):
            T.encode(bad, "vicuna_v1", ours)
    with pytest.raises(KeyError):
        T.get_template("nope")
    with pytest.raises(T.TemplateError):
        T.generation_prompt([H("q"), G("a")], "vicuna_v1", ours)


def test_system_override_and_system_message(sp):
    ours, _ = sp[False]
    conv = [H("q"), G("a")]
    assert T.render_prompt(conv, "vicuna_v1", system="Sys.", add_generation_prompt=False).startswith("Sys. USER: q")
    with_msg = [{"from": "system", "value": "Sys."}] + conv
    assert T.render_prompt(with_msg, "vicuna_v1", add_generation_prompt=False).startswith("Sys. USER: q")


# --- chatml / llama_3 against HF apply_chat_template --------------------------------------


@pytest.fixture(scope="module")
def hf_toks(tmp_path_factory):
    """template -> (tokenizer without <image>, the same with <image> added as a special token)."""
    out = {}
    for flavour, template in (("qwen2", "chatml"), ("llama3", "llama_3")):
        d = build_byte_bpe(str(tmp_path_factory.mktemp(flavour)), flavour)
        with_image = load_tokenizer(d)
        add_image_token(with_image)
        out[template] = (load_tokenizer(d), with_image)
    return out


def _hf_messages(conv, system=None):
    moved, _ = T.to_turns(conv)
    msgs = [{"role": role, "content": text} for role, text in moved]
    return ([{"role": "system", "content": system}] if system is not None else []) + msgs


def _apply(tok, msgs, **kw):
    out = tok.hf.apply_chat_template(msgs, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("template", ["chatml", "llama_3"])
@pytest.mark.parametrize("case", sorted(CONVS))
@pytest.mark.parametrize("system", [None, "You answer briefly."])
def test_matches_apply_chat_template(hf_toks, template, case, system):
    conv = [m for m in CONVS[case]] if CONVS[case][0]["from"] == "human" else CONVS[case][1:]
    has_image = any("<image>" in m["value"] for m in conv)
    plain_tok, image_tok = hf_toks[template]
    msgs = _hf_messages(conv, system)
    tok = image_tok if has_image else plain_tok
    image_id = tok.convert_tokens_to_ids("<image>")
    enc = T.encode(conv, template, tok, system=system)
    expected = _apply(tok, msgs)
    assert enc.tokens.tolist() == [T.IMAGE_MARKER if t == image_id else t for t in expected]
    # Without <image> in the vocabulary the text between images is tokenized call by call
    # (LLaVA's tokenizer_image_token); with byte-level BPE that gives the same ids.
    assert T.encode(conv, template, plain_tok, system=system).tokens.tolist() == enc.tokens.tolist()
    # Supervised: each answer (trimmed for llama_3) and its end token, nothing else.
    end = "<|im_end|>" if template == "chatml" else "<|eot_id|>"
    answers = [m["value"] if template == "chatml" else m["value"].strip() for m in conv[1::2]]
    assert tok.decode(enc.tokens[enc.label_mask], skip_special_tokens=False) == "".join(a + end for a in answers)
    gen = T.generation_prompt(conv[:1], template, tok, system=system)
    expected_gen = _apply(tok, msgs[: 2 if system is not None else 1], add_generation_prompt=True)
    assert gen.tolist() == [T.IMAGE_MARKER if t == image_id else t for t in expected_gen]


def test_stop_token_ids_hf(hf_toks):
    qwen, _ = hf_toks["chatml"]
    assert qwen.convert_tokens_to_ids("<|im_end|>") in T.stop_token_ids("chatml", qwen)
    llama3, _ = hf_toks["llama_3"]
    assert llama3.convert_tokens_to_ids("<|eot_id|>") in T.stop_token_ids("llama_3", llama3)


def test_interleaved_images_stay_in_place_when_asked(sp):
    ours, _ = sp[False]
    conv = [H("Look <image> then <image> now"), G("Ok.")]
    moved = T.render_prompt(conv, "vicuna_v1", add_generation_prompt=False)
    kept = T.render_prompt(conv, "vicuna_v1", add_generation_prompt=False, images_first=False)
    assert "USER: <image>\n<image>\nLook  then  now ASSISTANT:" in moved
    assert "USER: Look <image> then <image> now ASSISTANT:" in kept
    enc = T.encode(conv, "vicuna_v1", ours, images_first=False)
    assert enc.num_images == 2 and not enc.label_mask[enc.tokens == T.IMAGE_MARKER].any()


def test_plain_generation_prompt_is_the_training_prefix(sp):
    ours, _ = sp[False]
    conv = CONVS["single_image"]
    assert T.generation_prompt(conv[:1], "plain", ours).tolist() == [ours.bos_id, T.IMAGE_MARKER]
    assert T.encode(conv, "plain", ours).tokens[:2].tolist() == [ours.bos_id, T.IMAGE_MARKER]


@pytest.mark.parametrize("case", ["single_image", "multi_turn", "text_only"])
def test_an_empty_system_matches_llava_with_its_system_emptied(sp, case):
    """data.system / --system "": LLaVA's own conv with `system = ""` (a prompt that opens " USER:")."""
    from tests.helpers import llava_reference as R

    ours, ref = sp[False]
    conv = CONVS[case]
    ref_conv = R.conv_vicuna_v1()
    ref_conv.system = ""
    has_image = any("<image>" in m["value"] for m in conv)
    sources = R.preprocess_multimodal([copy.deepcopy(conv)]) if has_image else [copy.deepcopy(conv)]
    out = R.preprocess_v1(sources, ref, has_image, conv=ref_conv)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert not out["mismatch"]
    enc = T.encode(conv, T.with_system("vicuna_v1", ""), ours)
    assert enc.tokens.tolist() == ids
    assert enc.label_mask.tolist() == [lab != R.IGNORE_INDEX and t != R.IMAGE_TOKEN_INDEX for t, lab in zip(ids, labels)]
    assert len(enc.tokens) < len(T.encode(conv, "vicuna_v1", ours).tokens)
    # a conversation's own system message still wins; None keeps the template's
    own = [{"from": "system", "value": "Sys."}] + conv
    assert T.render_prompt(own, T.with_system("vicuna_v1", ""), add_generation_prompt=False).startswith("Sys. USER:")
    assert T.with_system("vicuna_v1", None) is T.get_template("vicuna_v1")


def test_data_system_reaches_the_loader_encode(sp):
    from vlm_jax.config import Config, load
    from vlm_jax.data.pipeline import default_encode

    ours, _ = sp[False]
    data = load(Config, None, ["data.system="]).data  # the override a user types
    assert data.system == ""
    conv = CONVS["multi_turn"]
    tokens, mask = default_encode(data, ours)(conv)
    enc = T.encode(conv, T.with_system("vicuna_v1", ""), ours)
    assert tokens.tolist() == enc.tokens.tolist() and mask.tolist() == enc.label_mask.tolist()
    assert default_encode(load(Config).data, ours)(conv)[0].tolist() == T.encode(conv, "vicuna_v1", ours).tokens.tolist()
