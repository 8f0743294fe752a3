"""Tiny tokenizers built at test time (no downloads): a LLaMA-like SentencePiece model and
byte-level BPE tokenizers with Qwen2 / Llama-3 special tokens and chat templates."""

from __future__ import annotations

import io
import os

_WORDS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. You are a helpful language and "
    "vision assistant. You are able to understand the visual content that the user provides, and "
    "assist the user with a variety of tasks using natural language. What is in the image? Describe "
    "the picture in detail. A cat sits on the mat next to a red ball. There are 3 dogs and 12 birds. "
    "Is it sunny? Yes, the sky is clear. Compare both images. The first one shows a city at night. "
    "Translate to French: the house is blue. La maison est bleue. Write a short poem about the sea."
)

_SP_LINES = [
    _WORDS,
    "USER: What is this? ASSISTANT: It is a photo of a train station.</s>USER: And this?",
    "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nWhat color is the car? [/INST] The car is red. </s>",
    "Caption: two people walking on the beach at sunset.\nAnother caption: a bowl of fruit.",
]


def train_llama_like_sentencepiece(out_dir: str, vocab_size: int = 700) -> str:
    """LLaMA settings: BPE, byte_fallback, add_dummy_prefix, no whitespace folding,
    unk=0 bos=1 eos=2 no pad, digits split. "USER"/"ASSISTANT" are user-defined symbols so
    that, as in LLaMA's vocabulary, "▁USER" is one token longer than "USER" (LLaVA's
    `legacy=False` bookkeeping in preprocess_v1 relies on that)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SP_LINES * 40),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=["USER", "ASSISTANT"],
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Qwen2's pre-tokenizer split pattern (Llama-3's differs only in digit grouping).
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_byte_bpe(out_dir: str, flavour: str, extra_special: tuple[str, ...] = ()) -> str:
    """Save a byte-level BPE tokenizer folder: flavour "qwen2" (chatml) or "llama3"."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if flavour == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN2_CHAT_TEMPLATE)
    elif flavour == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_CHAT_TEMPLATE)
    else:
        raise ValueError(flavour)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials + list(extra_special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_WORDS, *_SP_LINES] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    if extra_special:
        fast.add_special_tokens({"additional_special_tokens": list(extra_special)})
    fast.save_pretrained(out_dir)
    return out_dir
