"""Chat templates and loss masks, following LLaVA's conversation.py / train.py.

A template renders a conversation into text segments, each flagged supervised or not:
system prompt, user turns and the assistant role tag are masked; assistant text and its
end token are supervised. The rendered text is tokenized once (per run of text between
`<image>` tags, as LLaVA's `tokenizer_image_token` does) and every token takes the flag of
the character it starts at. Masks therefore come from the same tokenization as the ids:
no second tokenization whose length could disagree ("tokenization mismatch").

One LLaVA detail shapes the spans: LLaVA counts `len(tok("... ASSISTANT: ")) - 2` masked
tokens, i.e. the space after the role tag belongs to the answer (it merges into the
answer's first token "▁word"). Answers here therefore start with that space.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from vlm_jax.tokenizer import IMAGE_MARKER, IMAGE_TOKEN

USER, ASSISTANT = "user", "assistant"
_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
QWEN_SYSTEM = "You are a helpful assistant."


class TemplateError(ValueError):
    """The conversation cannot be rendered; `reason` is the data pipeline's skip reason for it."""

    def __init__(self, message: str, reason: str = "template_error"):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Encoded:
    tokens: np.ndarray  # [T] int32, IMAGE_MARKER for each image
    label_mask: np.ndarray  # [T] bool, True where tokens[i] is a supervised label

    @property
    def num_images(self) -> int:
        return int((self.tokens == IMAGE_MARKER).sum())


Turn = tuple[str, str]  # (USER | ASSISTANT, text)
Segment = tuple[str, bool]  # (text, supervised)


@dataclasses.dataclass(frozen=True)
class Specials:
    bos: str
    eos: str


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    render: Callable[[Sequence[Turn], str | None, Specials, bool], list[Segment]]
    default_system: str | None
    add_bos: bool  # prepend the tokenizer's BOS id (LLaMA-family tokenizers add it)
    stop_strings: tuple[str, ...]  # "{eos}" is replaced by the tokenizer's EOS text


# --- renderers: (turns, system, specials, open_assistant_turn) -> segments -------------


def _render_vicuna_v1(turns, system, sp, open_turn):
    # SeparatorStyle.TWO: system + " " + "USER: q" + " " + "ASSISTANT: a" + "</s>" ...
    segs = [(system + " ", False)]
    for role, text in turns:
        if role == USER:
            segs.append((f"USER: {text} ", False))
        else:
            segs += [("ASSISTANT:", False), (f" {text}{sp.eos}", True)]
    if open_turn:
        segs.append(("ASSISTANT:", False))
    return segs


def _llama_2_renderer(round_sep: Callable[[Specials], str]):
    # SeparatorStyle.LLAMA_2: "[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{q} [/INST] {a} </s>" then
    # round_sep + "[INST] {q} [/INST] {a} </s>" (the leading separator is stripped).
    def render(turns, system, sp, open_turn):
        segs = []
        for i, (role, text) in enumerate(turns):
            if role == USER:
                if i == 0 and system:
                    text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
                sep = round_sep(sp) if i > 0 else ""
                segs.append((f"{sep}[INST] {text} [/INST]", False))
            else:
                segs.append((f" {text} {sp.eos}", True))
        return segs

    return render


def _render_plain(turns, system, sp, open_turn):
    # preprocess_plain: the user turn is reduced to its images; "caption\n" is supervised.
    segs = []
    for role, text in turns:
        if role == USER:
            segs.append((IMAGE_TOKEN * text.count(IMAGE_TOKEN), False))
        else:
            segs.append((text + "\n", True))
    return segs


def _render_chatml(turns, system, sp, open_turn):
    # Qwen2's chat template; the "\n" after <|im_end|> is masked.
    segs = [(f"<|im_start|>system\n{system}<|im_end|>\n", False)]
    for role, text in turns:
        if role == USER:
            segs.append((f"<|im_start|>user\n{text}<|im_end|>\n", False))
        else:
            segs += [("<|im_start|>assistant\n", False), (f"{text}<|im_end|>", True), ("\n", False)]
    if open_turn:
        segs.append(("<|im_start|>assistant\n", False))
    return segs


def _render_llama_3(turns, system, sp, open_turn):
    # Llama-3-Instruct's chat template (contents are trimmed, BOS is part of the text).
    def header(role):
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    segs = [(sp.bos, False)]
    if system is not None:
        segs.append((f"{header('system')}{system.strip()}<|eot_id|>", False))
    for role, text in turns:
        if role == USER:
            segs.append((f"{header('user')}{text.strip()}<|eot_id|>", False))
        else:
            segs += [(header("assistant"), False), (f"{text.strip()}<|eot_id|>", True)]
    if open_turn:
        segs.append((header("assistant"), False))
    return segs


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("plain", _render_plain, None, True, ("\n",)),
        Template("vicuna_v1", _render_vicuna_v1, VICUNA_SYSTEM, True, ("{eos}",)),
        Template("llava_llama_2", _llama_2_renderer(lambda sp: sp.bos), LLAVA_LLAMA_2_SYSTEM, True, ("{eos}",)),
        Template("mistral_instruct", _llama_2_renderer(lambda sp: ""), "", True, ("{eos}",)),
        Template("chatml", _render_chatml, QWEN_SYSTEM, False, ("<|im_end|>",)),
        Template("llama_3", _render_llama_3, None, False, ("<|eot_id|>",)),
    )
}
_ALIASES = {"v1": "vicuna_v1", "llava_v1": "vicuna_v1", "llama_2": "llava_llama_2", "mistral": "mistral_instruct",
            "qwen": "chatml", "qwen_2": "chatml", "llama3": "llama_3"}


def names() -> list[str]:
    """Template names and their aliases (the names the original projects use)."""
    return sorted({*TEMPLATES, *_ALIASES})


def get_template(name: str | Template) -> Template:
    if isinstance(name, Template):
        return name
    key = _ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[key]


def with_system(name: str | Template, system: str | None) -> Template:
    """The template with `system` as the system prompt of conversations that bring none of their own
    (None keeps the template's; "" renders the template's empty-system form, as LLaVA's conv does)."""
    tmpl = get_template(name)
    return tmpl if system is None else dataclasses.replace(tmpl, default_system=system)


# --- conversation -> turns ------------------------------------------------------------


def _move_images_first(text: str) -> str:
    # LLaVA's preprocess_multimodal; k images become k "<image>\n" in front (k=1 is LLaVA's).
    n = text.count(IMAGE_TOKEN)
    if n == 0:
        return text
    text = text.replace(IMAGE_TOKEN, "").strip()
    return ((IMAGE_TOKEN + "\n") * n + text).strip()


def to_turns(conversations, images_first: bool = True) -> tuple[list[Turn], str | None]:
    """LLaVA `[{"from", "value"}]` -> alternating (role, text) turns and a system override.

    LLaVA's rules: an optional leading system message, a leading assistant turn is dropped, then
    user (human|user) and assistant (gpt|assistant) alternate, none of them empty."""
    msgs = list(conversations or [])
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("from"), str) or not isinstance(m.get("value"), str):
            raise TemplateError(f"bad message {m!r}")
    system = msgs.pop(0)["value"] if msgs and msgs[0]["from"] == "system" else None
    if msgs and _ROLES.get(msgs[0]["from"]) == ASSISTANT:  # LLaVA: "Skip the first one if it is not from human"
        msgs = msgs[1:]
    if not msgs or all(not m["value"].strip() for m in msgs):
        raise TemplateError("empty conversation", "empty_conversation")
    for i, m in enumerate(msgs):
        if _ROLES.get(m["from"]) != (USER, ASSISTANT)[i % 2]:
            want = ("human", "gpt")[i % 2]
            raise TemplateError(f"turn {i} is from {m['from']!r}, expected {want!r}", "bad_role_order")
    turns: list[Turn] = [(_ROLES[m["from"]], m["value"]) for m in msgs]
    for i, (_, text) in enumerate(turns):
        if not text.strip():
            raise TemplateError(f"message {i} is empty")
    if images_first:
        turns = [(role, _move_images_first(text)) for role, text in turns]
    return turns, system


def _specials(tokenizer) -> Specials:
    if tokenizer is None:
        return Specials("<s>", "</s>")
    return Specials(tokenizer.bos_token or "", tokenizer.eos_token or "")


def render_segments(conversations, template, tokenizer=None, system=None, *, add_generation_prompt=False,
                    images_first=True) -> tuple[Template, list[Segment]]:
    tmpl = get_template(template)
    turns, conv_system = to_turns(conversations, images_first)
    if system is None:
        system = conv_system if conv_system is not None else tmpl.default_system
    if add_generation_prompt and turns[-1][0] != USER:
        raise TemplateError("a generation prompt needs a conversation that ends with a user message")
    return tmpl, tmpl.render(turns, system, _specials(tokenizer), add_generation_prompt)


def render_prompt(conversations, template, tokenizer=None, system=None, *, add_generation_prompt=True,
                  images_first=True) -> str:
    """The prompt text (with `<image>` tags), as LLaVA's `get_prompt()` with the last turn open."""
    _, segs = render_segments(conversations, template, tokenizer, system,
                              add_generation_prompt=add_generation_prompt, images_first=images_first)
    return "".join(s for s, _ in segs)


# --- tokenization -----------------------------------------------------------------------


def tokenize_segments(segments: Sequence[Segment], tokenizer, add_bos: bool) -> Encoded:
    """(text, supervised) segments -> ids with one IMAGE_MARKER per `<image>`, each token flagged as
    the character it starts at (one tokenization of the whole text)."""
    text = "".join(s for s, _ in segments)
    supervised = np.zeros(len(text) + 1, bool)
    pos = 0
    for s, flag in segments:
        supervised[pos : pos + len(s)] = flag
        pos += len(s)

    ids: list[int] = []
    labels: list[bool] = []
    if add_bos and tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)
        labels.append(False)

    if tokenizer.image_chunks:
        pos = 0
        for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
            if k:
                ids.append(IMAGE_MARKER)
                labels.append(False)  # LLaVA labels image features IGNORE_INDEX
                pos += len(IMAGE_TOKEN)
            chunk_ids, starts = tokenizer.encode_with_offsets(chunk)
            ids += chunk_ids
            labels += [bool(supervised[pos + s]) for s in starts]
            pos += len(chunk)
    else:
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        all_ids, starts = tokenizer.encode_with_offsets(text)
        for tid, s in zip(all_ids, starts):
            is_image = tid == image_id
            ids.append(IMAGE_MARKER if is_image else tid)
            labels.append(False if is_image else bool(supervised[s]))

    return Encoded(np.asarray(ids, np.int32), np.asarray(labels, np.bool_))


def encode(conversations, template, tokenizer, system=None, *, images_first=True) -> Encoded:
    """Input ids (with BOS where the template uses one; one IMAGE_MARKER per `<image>`) and
    the per-token label mask for a LLaVA-format conversation."""
    tmpl, segs = render_segments(conversations, template, tokenizer, system, images_first=images_first)
    return tokenize_segments(segs, tokenizer, tmpl.add_bos)


def generation_prompt(conversations, template, tokenizer, system=None, *, images_first=True) -> np.ndarray:
    """int32 ids to prefill at inference: the conversation with an open assistant turn."""
    tmpl, segs = render_segments(conversations, template, tokenizer, system, add_generation_prompt=True,
                                 images_first=images_first)
    return tokenize_segments(segs, tokenizer, tmpl.add_bos).tokens


def stop_strings(template, tokenizer=None) -> tuple[str, ...]:
    """Strings that end an assistant turn (LLaVA's `stop_str`)."""
    eos = _specials(tokenizer).eos
    return tuple(s.replace("{eos}", eos) for s in get_template(template).stop_strings)


def stop_token_ids(template, tokenizer) -> tuple[int, ...]:
    """EOS plus every stop string that is a single token of the vocabulary."""
    ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    for s in stop_strings(template, tokenizer):
        idx = tokenizer.convert_tokens_to_ids(s)
        if idx is not None and idx not in ids:
            ids.append(idx)
    return tuple(ids)
