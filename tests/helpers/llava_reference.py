"""The reference: LLaVA's preprocessing, transcribed, driven by SentencePiece directly.

- `SlowLlamaTokenizer`: transformers 4.37's slow `LlamaTokenizer` (what LLaVA-1.5 pins and
  loads with `use_fast=False`): `PreTrainedTokenizer.tokenize` (split on added tokens),
  `LlamaTokenizer.tokenize` / `_tokenize` (legacy=False: "▁" prefix, dummy prefix off,
  the "<unk>" trick), BOS added by `build_inputs_with_special_tokens`.
- `Conversation.get_prompt`, `preprocess_multimodal`, `tokenizer_image_token`,
  `preprocess_v1` (with the `legacy=False` fix), `preprocess_llama_2`, `preprocess_plain`
  from haotian-liu/LLaVA (llava/conversation.py, llava/mm_utils.py, llava/train/train.py),
  with torch tensors replaced by lists. Kept deliberately literal; do not "fix" it.
"""

from __future__ import annotations

import copy
import dataclasses

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
SPIECE_UNDERLINE = "▁"


class SlowLlamaTokenizer:
    def __init__(self, vocab_file: str, legacy: bool = False):
        import sentencepiece as spm

        self.legacy = legacy
        self.sp_model = spm.SentencePieceProcessor()
        if legacy:
            self.sp_model.Load(vocab_file)
        else:  # LlamaTokenizer.get_spm_processor
            from sentencepiece import sentencepiece_model_pb2 as model_pb2

            with open(vocab_file, "rb") as f:
                model = model_pb2.ModelProto.FromString(f.read())
            normalizer_spec = model_pb2.NormalizerSpec()
            normalizer_spec.add_dummy_prefix = False
            model.normalizer_spec.MergeFrom(normalizer_spec)
            self.sp_model.LoadFromSerializedProto(model.SerializeToString())
        self.unk_token, self.bos_token, self.eos_token = "<unk>", "<s>", "</s>"
        self.bos_token_id = 1
        self.pad_token_id = 0  # LLaVA: tokenizer.pad_token = tokenizer.unk_token
        self.all_special_tokens = [self.bos_token, self.eos_token, self.unk_token]
        self.added_tokens_encoder = {self.unk_token: 0, self.bos_token: 1, self.eos_token: 2}
        self.model_max_length = 4096

    @property
    def unk_token_length(self):
        return len(self.sp_model.encode(str(self.unk_token)))

    def _trie_split(self, text):
        out, start, i = [], 0, 0
        specials = sorted(self.added_tokens_encoder, key=len, reverse=True)
        while i < len(text):
            match = next((s for s in specials if text.startswith(s, i)), None)
            if match is None:
                i += 1
                continue
            out += [text[start:i], match]
            i += len(match)
            start = i
        out.append(text[start:])
        return [t for t in out if t]

    def _base_tokenize(self, text):  # PreTrainedTokenizer.tokenize (no lstrip/rstrip tokens)
        tokenized = []
        for token in self._trie_split(text):
            if token in self.added_tokens_encoder:
                tokenized.append(token)
            else:
                tokenized.extend(self._tokenize(token))
        return tokenized

    def tokenize(self, text):
        if self.legacy or len(text) == 0:
            return self._base_tokenize(text)
        tokens = self._base_tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def _tokenize(self, text):
        tokens = self.sp_model.encode(text, out_type=str)
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return tokens
        tokens = self.sp_model.encode(self.unk_token + text, out_type=str)
        return tokens[self.unk_token_length :] if len(tokens) >= self.unk_token_length else tokens

    def convert_tokens_to_ids(self, tokens):
        return [self.added_tokens_encoder.get(t, None) if t in self.added_tokens_encoder
                else self.sp_model.piece_to_id(t) for t in tokens]

    @dataclasses.dataclass
    class _Out:
        input_ids: list

    def __call__(self, text):
        return self._Out([self.bos_token_id] + self.convert_tokens_to_ids(self.tokenize(text)))


# --- llava/conversation.py (sep styles used here) ------------------------------------------


@dataclasses.dataclass
class Conversation:
    system: str
    roles: tuple
    sep_style: str
    sep: str
    sep2: str = None
    messages: list = dataclasses.field(default_factory=list)

    def get_prompt(self):
        messages = self.messages
        if self.sep_style == "TWO":
            seps = [self.sep, self.sep2]
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                if message:
                    ret += role + ": " + message + seps[i % 2]
                else:
                    ret += role + ":"
        elif self.sep_style == "LLAMA_2":
            wrap_sys = lambda msg: f"<<SYS>>\n{msg}\n<</SYS>>\n\n" if len(msg) > 0 else msg  # noqa: E731
            wrap_inst = lambda msg: f"[INST] {msg} [/INST]"  # noqa: E731
            ret = ""
            for i, (role, message) in enumerate(messages):
                if message:
                    if i == 0:
                        message = wrap_sys(self.system) + message
                    if i % 2 == 0:
                        message = wrap_inst(message)
                        ret += self.sep + message
                    else:
                        ret += " " + message + " " + self.sep2
                else:
                    ret += ""
            ret = ret.lstrip(self.sep)
        elif self.sep_style == "PLAIN":
            seps = [self.sep, self.sep2]
            ret = self.system
            for i, (role, message) in enumerate(messages):
                if message:
                    ret += message + seps[i % 2]
                else:
                    ret += ""
        else:
            raise ValueError(self.sep_style)
        return ret

    def append_message(self, role, message):
        self.messages.append([role, message])


def conv_vicuna_v1():
    return Conversation(
        system="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        roles=("USER", "ASSISTANT"), sep_style="TWO", sep=" ", sep2="</s>")


def conv_llava_llama_2():
    return Conversation(
        system="You are a helpful language and vision assistant. "
        "You are able to understand the visual content that the user provides, "
        "and assist the user with a variety of tasks using natural language.",
        roles=("USER", "ASSISTANT"), sep_style="LLAMA_2", sep="<s>", sep2="</s>")


def conv_mistral_instruct():
    return Conversation(system="", roles=("USER", "ASSISTANT"), sep_style="LLAMA_2", sep="", sep2="</s>")


def conv_llava_plain():
    return Conversation(system="", roles=("", ""), sep_style="PLAIN", sep="\n")


# --- llava/mm_utils.py ---------------------------------------------------------------------


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


# --- llava/train/train.py --------------------------------------------------------------------


def preprocess_multimodal(sources, several_images_per_message=False):
    for source in sources:
        for sentence in source:
            if DEFAULT_IMAGE_TOKEN in sentence["value"]:
                # LLaVA keeps one tag per message; the extension keeps them all (in front).
                n = sentence["value"].count(DEFAULT_IMAGE_TOKEN) if several_images_per_message else 1
                sentence["value"] = sentence["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
                sentence["value"] = (DEFAULT_IMAGE_TOKEN + "\n") * n + sentence["value"]
                sentence["value"] = sentence["value"].strip()
    return sources


def _prompts(sources, conv):
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    conversations = []
    for i, source in enumerate(sources):
        if roles[source[0]["from"]] != conv.roles[0]:
            source = source[1:]
        conv.messages = []
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            assert role == conv.roles[j % 2], f"{i}"
            conv.append_message(role, sentence["value"])
        conversations.append(conv.get_prompt())
    return conversations


def _tok(text, tokenizer, has_image):
    return tokenizer_image_token(text, tokenizer) if has_image else tokenizer(text).input_ids


def preprocess_v1(sources, tokenizer, has_image=False, conv=None):
    conv = conv or conv_vicuna_v1()
    conversations = _prompts(sources, conv)
    input_ids = [_tok(prompt, tokenizer, has_image) for prompt in conversations]
    targets = copy.deepcopy(input_ids)
    mismatch = False
    sep = conv.sep + conv.roles[1] + ": "
    for conversation, target in zip(conversations, targets):
        total_len = sum(int(t != tokenizer.pad_token_id) for t in target)
        rounds = conversation.split(conv.sep2)
        cur_len = 1
        target[:cur_len] = [IGNORE_INDEX] * cur_len
        for i, rou in enumerate(rounds):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            round_len = len(_tok(rou, tokenizer, has_image))
            instruction_len = len(_tok(parts[0], tokenizer, has_image)) - 2
            if i != 0 and not tokenizer.legacy:  # and IS_TOKENIZER_GREATER_THAN_0_14
                round_len -= 1
                instruction_len -= 1
            _ignore(target, cur_len, cur_len + instruction_len)
            cur_len += round_len
        _ignore(target, cur_len, len(target))
        if cur_len < tokenizer.model_max_length and cur_len != total_len:
            _ignore(target, 0, len(target))
            mismatch = True
    return dict(input_ids=input_ids, labels=targets, mismatch=mismatch)


def preprocess_llama_2(sources, tokenizer, has_image=False, conv=None):
    conv = conv or conv_llava_llama_2()
    conversations = _prompts(sources, conv)
    input_ids = [_tok(prompt, tokenizer, has_image) for prompt in conversations]
    targets = copy.deepcopy(input_ids)
    mismatch = False
    sep = "[/INST] "
    for conversation, target in zip(conversations, targets):
        total_len = sum(int(t != tokenizer.pad_token_id) for t in target)
        rounds = conversation.split(conv.sep2)
        cur_len = 1
        target[:cur_len] = [IGNORE_INDEX] * cur_len
        for i, rou in enumerate(rounds):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            round_len = len(_tok(rou, tokenizer, has_image))
            instruction_len = len(_tok(parts[0], tokenizer, has_image)) - 2
            _ignore(target, cur_len, cur_len + instruction_len)
            cur_len += round_len
        _ignore(target, cur_len, len(target))
        if cur_len < tokenizer.model_max_length and cur_len != total_len:
            _ignore(target, 0, len(target))
            mismatch = True
    return dict(input_ids=input_ids, labels=targets, mismatch=mismatch)


def preprocess_plain(sources, tokenizer):
    conversations = []
    for source in sources:
        assert len(source) == 2
        assert DEFAULT_IMAGE_TOKEN in source[0]["value"]
        source[0]["value"] = DEFAULT_IMAGE_TOKEN
        conversation = source[0]["value"] + source[1]["value"] + conv_llava_plain().sep
        conversations.append(conversation)
    input_ids = [tokenizer_image_token(prompt, tokenizer) for prompt in conversations]
    targets = copy.deepcopy(input_ids)
    for target, source in zip(targets, sources):
        tokenized_len = len(tokenizer_image_token(source[0]["value"], tokenizer))
        _ignore(target, 0, tokenized_len)
    return dict(input_ids=input_ids, labels=targets, mismatch=False)


def _ignore(target, start, stop):
    for k in range(max(start, 0), min(stop, len(target))):
        target[k] = IGNORE_INDEX


def llava_encode(conversations, template, tokenizer, has_image, several_images_per_message=False):
    """LazySupervisedDataset.__getitem__'s text path -> (ids, supervised mask, mismatch).
    Image positions are unsupervised (LLaVA labels image features IGNORE_INDEX)."""
    sources = copy.deepcopy([conversations])
    if has_image:
        sources = preprocess_multimodal(sources, several_images_per_message)
    if template == "plain":
        out = preprocess_plain(sources, tokenizer)
    elif template == "vicuna_v1":
        out = preprocess_v1(sources, tokenizer, has_image)
    elif template == "llava_llama_2":
        out = preprocess_llama_2(sources, tokenizer, has_image)
    elif template == "mistral_instruct":
        out = preprocess_llama_2(sources, tokenizer, has_image, conv=conv_mistral_instruct())
    else:
        raise ValueError(template)
    ids, labels = out["input_ids"][0], out["labels"][0]
    mask = [lab != IGNORE_INDEX and tid != IMAGE_TOKEN_INDEX for tid, lab in zip(ids, labels)]
    return ids, mask, out["mismatch"]
