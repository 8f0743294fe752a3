"""What the inference CLIs share: load a model (CKPT folder or HF/LLaVA folder converted in memory),
turn (question, images) into prompt ids with image placeholders, batch, generate, decode.

Batches are left-padded to a multiple of `PAD_TO` and filled up to a fixed row count so that a
long evaluation compiles the prefill and the decode loop only a few times.

The model's context is its `max_position_embeddings`: a prompt that fills it is a `BadPrompt`; an answer
that would run past it is cut there (`run` returns at most `room(m, prompt)` new tokens per row).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from convert import api as convert_api
from vlm_jax import generate as gen
from vlm_jax.config import ModelConfig
from vlm_jax.data import images as img_lib
from vlm_jax.data import templates
from vlm_jax.data.errors import SkipExample
from vlm_jax.image_layout import image_layout
from vlm_jax.tokenizer import IMAGE_TOKEN, load_tokenizer

PAD_TO = 32


class BadPrompt(ValueError):
    """A question that cannot be asked as given; the message starts with a named reason
    (empty_question, image_tag_mismatch, prompt_too_long, missing_image, not_an_image, ...)."""


@dataclasses.dataclass
class Loaded:
    params: dict
    cfg: ModelConfig
    tokenizer: object
    aspect: str  # image preprocessing: pad (LLaVA) | crop (HF CLIP processor) | resize (SigLIP)
    name: str
    resample: str = "bicubic"  # the image processor's resampling filter


def load(checkpoint: Optional[str] = None, hf: Optional[str] = None, tokenizer: Optional[str] = None,
         vision: Optional[str] = None) -> Loaded:
    from vlm_jax.checkpoint import load_params, tokenizer_dir

    if hf:
        params, cfg, pre = convert_api.load_in_memory(hf, vision=vision)
        tok_dir, name = tokenizer or hf, os.path.basename(os.path.normpath(hf))
    else:
        params, cfg = load_params(checkpoint)
        pre = convert_api.preprocessing(checkpoint)
        tok_dir, name = tokenizer or tokenizer_dir(checkpoint), os.path.basename(os.path.normpath(checkpoint))
    if not tok_dir:
        raise FileNotFoundError(f"{checkpoint or hf} has no tokenizer/ folder; pass --tokenizer DIR")
    params = jax.tree.map(jnp.asarray, params)
    return Loaded(params, cfg, load_tokenizer(tok_dir), pre.aspect, name, pre.resample)


def default_template(tokenizer) -> str:
    if tokenizer.convert_tokens_to_ids("<|im_start|>") is not None:
        return "chatml"
    if tokenizer.convert_tokens_to_ids("<|eot_id|>") is not None:
        return "llama_3"
    return "vicuna_v1"


def context_length(m: Loaded) -> int:
    return int(m.cfg.decoder.max_position_embeddings)


def room(m: Loaded, prompt: np.ndarray) -> int:
    """New tokens that fit in the model's context after `prompt`."""
    return context_length(m) - len(prompt)


def prompt_ids(m: Loaded, template: str, text: str, num_images: int) -> np.ndarray:
    """Question text (with or without `<image>` tags) -> prompt ids, every image as its N placeholders.
    Without tags, LLaVA's convention: the images go first, each as "<image>\\n"."""
    tags = text.count(IMAGE_TOKEN)
    if tags and tags != num_images:
        raise BadPrompt(f"image_tag_mismatch: the prompt has {tags} {IMAGE_TOKEN} tags but {num_images} images "
                        "were given")
    if not text.strip() and not num_images:
        raise BadPrompt("empty_question: no text and no image")
    if not tags:
        text = (IMAGE_TOKEN + "\n") * num_images + text
    return conversation_ids(m, template, [{"from": "human", "value": text}])


def conversation_ids(m: Loaded, template: str, conversation: list[dict]) -> np.ndarray:
    """A LLaVA conversation ([{"from", "value"}], optionally a first "system" turn, ending with a
    human turn; one `<image>` tag per image) -> prompt ids with an open assistant turn, every image
    as its N placeholders. Raises templates.TemplateError on a conversation the template rejects."""
    ids = templates.generation_prompt(conversation, template, m.tokenizer)
    num_images = sum(1 for t in ids if t == templates.IMAGE_MARKER)
    if m.cfg.aligngpt.enabled and num_images:  # AlignGPT: the gated indicator right after BOS
        ids = [ids[0], m.cfg.aligngpt.indicator_token_id, *ids[1:]]
    n = image_layout(m.cfg).tokens_per_image
    return np.concatenate([np.full(n, m.cfg.image_token_id, np.int32) if t == templates.IMAGE_MARKER
                           else np.asarray([t], np.int32) for t in ids])


def load_image(m: Loaded, path: str) -> np.ndarray:
    """-> uint8 [K, H, W, 3]; an unreadable or undecodable file is a BadPrompt naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadPrompt(f"missing_image: {path}: {e.strerror or e}") from None
    try:
        return image_from_bytes(m, data, path)
    except SkipExample as e:
        raise BadPrompt(str(e)) from None


def image_from_bytes(m: Loaded, data: bytes, name: str = "") -> np.ndarray:
    """Encoded image bytes -> uint8 [K, H, W, 3]; bad bytes raise SkipExample naming `name`."""
    v = m.cfg.vision
    return img_lib.crops(img_lib.decode(data, name), m.aspect, v.image_size, v.image_mean, image_layout(m.cfg).tiling,
                         m.resample)


def prepare(m: Loaded, template: str, text: str, image_paths: Sequence[str]) -> tuple[np.ndarray, list]:
    """(question, image files) -> a row for `run`: (prompt ids, crops per image); BadPrompt if it
    cannot be asked (the cheap checks first, the images last)."""
    try:
        ids = prompt_ids(m, template, text, len(image_paths))
    except templates.TemplateError as e:
        raise BadPrompt(f"template_error: {e}") from None
    if room(m, ids) < 1:
        raise BadPrompt(f"prompt_too_long: {len(ids)} tokens, the model's context is {context_length(m)} "
                        "(max_position_embeddings)")
    return ids, [load_image(m, p) for p in image_paths]


def make_batch(m: Loaded, rows: Sequence[tuple[np.ndarray, list]], num_rows: Optional[int] = None,
               length: int = 0, slots: int = 0) -> dict:
    """[(prompt ids, [uint8 [K,H,W,3] per image])] -> left-padded batch (+ filler rows up to num_rows),
    at least `length` tokens and `slots` image slots wide (fixed shapes for a server)."""
    rows = list(rows) + [rows[0]] * max(0, (num_rows or 0) - len(rows))
    length = max(length, -(-max(len(ids) for ids, _ in rows) // PAD_TO) * PAD_TO)
    v = m.cfg.vision
    k = image_layout(m.cfg).crops_per_image
    slots = max(slots, max(len(ims) for _, ims in rows))
    tokens = np.full((len(rows), length), m.tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    images = np.zeros((len(rows), slots, k, v.image_size, v.image_size, 3), np.uint8)
    for i, (ids, ims) in enumerate(rows):
        tokens[i, length - len(ids):], mask[i, length - len(ids):] = ids, True
        for j, im in enumerate(ims):
            images[i, j] = im
    batch = {"tokens": jnp.asarray(tokens), "prompt_mask": jnp.asarray(mask)}
    if slots:
        batch["images"] = jnp.asarray(images)
    return batch


def sampling(m: Loaded, template: str, max_new_tokens: int, temperature=0.0, top_k=0, top_p=1.0) -> gen.SamplingConfig:
    tok = m.tokenizer
    eos = templates.stop_token_ids(template, tok)
    multi = [s for s in templates.stop_strings(template, tok) if tok.convert_tokens_to_ids(s) is None]
    return gen.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              eos_ids=tuple(eos), stop_sequences=gen.stop_sequences_for(tok, multi),
                              pad_id=tok.pad_id)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text


def decode_text(m: Loaded, template: str, ids, extra_stops: Sequence[str] = ()) -> str:
    stops = (*templates.stop_strings(template, m.tokenizer), *extra_stops)
    return cut_at_stop(m.tokenizer.decode(list(ids), skip_special_tokens=True), stops).strip()


class TextStream:
    """The growing answer of one row as text deltas whose concatenation is `decode_text`: text that
    could still turn into a stop string, trailing whitespace (stripped at the end) and a trailing
    partial UTF-8 character are held back until later tokens settle them."""

    def __init__(self, m: Loaded, template: str, extra_stops: Sequence[str] = ()):
        self.m, self.template, self.extra = m, template, tuple(s for s in extra_stops if s)
        self.stops = (*templates.stop_strings(template, m.tokenizer), *self.extra)
        self.shown = ""
        self.stopped = False  # a stop string appeared in the text

    def update(self, ids) -> str:
        text = self.m.tokenizer.decode(list(ids), skip_special_tokens=True)
        visible = cut_at_stop(text, self.stops)
        self.stopped = visible != text
        hold = 0 if self.stopped else max((len(s) for s in self.stops), default=1) - 1
        visible = visible.lstrip()
        ready = visible[: max(len(visible) - hold, 0)].rstrip().rstrip("\ufffd")
        return self._advance(ready)

    def finish(self, ids) -> str:
        return self._advance(decode_text(self.m, self.template, ids, self.extra))

    def _advance(self, ready: str) -> str:
        if len(ready) <= len(self.shown) or not ready.startswith(self.shown):
            return ""
        delta, self.shown = ready[len(self.shown):], ready
        return delta


def run(m: Loaded, template: str, rows, sc: gen.SamplingConfig, seed: int = 0, num_rows: Optional[int] = None,
        stream: Optional[Callable[[int, list], None]] = None, chunk: int = 8) -> list[list[int]]:
    """Generate for `rows` (see make_batch) -> generated ids per row (the stop token included), each
    cut at the model's context. `stream(row, ids_so_far)` is called after every decoded segment when given."""
    batch = make_batch(m, rows, num_rows)

    def on_tokens(state):
        toks, num = np.asarray(state.tokens), np.asarray(state.num_tokens)
        for i in range(len(rows)):
            stream(i, list(toks[i, : num[i]]))

    state = gen.generate(m.cfg, m.params, batch, sc, jax.random.key(seed), chunk=chunk if stream else 0,
                         on_tokens=on_tokens if stream else None)
    toks, num = np.asarray(state.tokens), np.asarray(state.num_tokens)
    return [[int(t) for t in toks[i, : min(num[i], room(m, rows[i][0]))]] for i in range(len(rows))]
