"""Load a tokenizer folder or a SentencePiece model behind one small interface.

Two backends:
- `SentencePieceTokenizer`: a LLaMA-style `tokenizer.model` driven by `sentencepiece`
  itself, reproducing the slow `transformers.LlamaTokenizer` that LLaVA trains with
  (`legacy=False` as Vicuna-1.5 ships it, or `legacy=True`). transformers 5 converts
  `tokenizer.model` to a `tokenizers` pipeline that is not always identical.
- `HFTokenizer`: anything `transformers.AutoTokenizer` loads from tokenizer.json /
  tokenizer_config.json (Qwen2, Llama-3, llava-hf ...). Never `trust_remote_code`.

Both expose `encode_with_offsets`, which the chat templates use to derive loss masks
from character spans of one tokenization instead of re-tokenizing pieces of text.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

IMAGE_TOKEN = "<image>"  # the image tag in LLaVA-format text
# LLaVA's IMAGE_TOKEN_INDEX: the id templates emit for each tag (expanded to the model's placeholders
# later), and original LLaVA's placeholder id outside the vocabulary
IMAGE_MARKER = -200
SPIECE_UNDERLINE = "▁"


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class SentencePieceTokenizer:
    """`sentencepiece` model with the semantics of the slow LlamaTokenizer.

    Text is first split on special/added tokens (`<s>`, `</s>`, `<unk>`, added tokens such
    as `<image>`), exactly as `PreTrainedTokenizer.tokenize` does; the other pieces go
    through SentencePiece. With `legacy=False` a "▁" is prepended to the whole text and
    the model's dummy prefix is disabled, so text right after a special token gets no
    leading space (LlamaTokenizer, transformers 4.3x).
    """

    kind = "sentencepiece"
    # LLaVA's tokenizer_image_token tokenizes the text between images call by call.
    image_chunks = True

    def __init__(
        self,
        model_file: str,
        *,
        legacy: bool = False,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        added_tokens: dict[str, int] | None = None,
    ):
        import sentencepiece as spm

        self.model_file = model_file
        self.legacy = legacy
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self._sp_encode = self.sp
        if not legacy:
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto.FromString(self.sp.serialized_model_proto())
            proto.normalizer_spec.add_dummy_prefix = False
            self._sp_encode = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

        def piece(idx: int) -> str | None:
            return self.sp.id_to_piece(idx) if idx >= 0 else None

        self.bos_token = bos_token or piece(self.sp.bos_id())
        self.eos_token = eos_token or piece(self.sp.eos_id())
        self.unk_token = unk_token or piece(self.sp.unk_id()) or "<unk>"
        self.pad_token = pad_token
        # Added tokens that are already SentencePiece pieces (<s>, </s>, <unk>) need no entry.
        self._added: dict[str, int] = {
            t: i for t, i in (added_tokens or {}).items()
            if i >= self.sp.get_piece_size() or self.sp.id_to_piece(i) != t
        }
        self._added_by_id = {i: t for t, i in self._added.items()}
        self._unk_len = len(self._sp_encode.encode(self.unk_token))
        self._rebuild_split()

    # -- vocabulary -------------------------------------------------------------------

    def _rebuild_split(self) -> None:
        specials = {t for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token) if t}
        specials |= set(self._added)
        self._specials = specials
        alternation = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
        self._split_re = re.compile(f"({alternation})") if alternation else None

    @property
    def vocab_size(self) -> int:
        return max([self.sp.get_piece_size()] + [i + 1 for i in self._added_by_id])

    def convert_tokens_to_ids(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        idx = self.sp.piece_to_id(token)
        if idx == self.sp.unk_id() and token != self.unk_token:
            return None
        return idx

    def id_to_piece(self, idx: int) -> str:
        if idx in self._added_by_id:
            return self._added_by_id[idx]
        return self.sp.id_to_piece(idx)

    def add_special_token(self, token: str) -> int:
        """Append `token` after the vocabulary (as HF `add_special_tokens` does); return its id."""
        existing = self.convert_tokens_to_ids(token)
        if existing is not None:
            if token not in self._specials:
                self._added[token] = existing
                self._added_by_id[existing] = token
                self._rebuild_split()
            return existing
        idx = self.vocab_size
        self._added[token] = idx
        self._added_by_id[idx] = token
        self._rebuild_split()
        return idx

    @property
    def bos_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.convert_tokens_to_ids(self.eos_token) if self.eos_token else None

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    @property
    def pad_id(self) -> int:
        # LLaVA sets `tokenizer.pad_token = tokenizer.unk_token` for LLaMA/Vicuna.
        if self.pad_token is not None:
            idx = self.convert_tokens_to_ids(self.pad_token)
            if idx is not None:
                return idx
        return self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_id

    @property
    def hf(self):
        return None

    # -- encoding ---------------------------------------------------------------------

    def _encode_text(self, text: str) -> tuple[list[int], np.ndarray]:
        """SentencePiece on special-free text -> ids, start char of each (LlamaTokenizer._tokenize)."""
        shift = 0
        if not self.legacy and text.startswith((SPIECE_UNDERLINE, " ")):
            # SentencePiece without dummy prefix drops a leading "▁"; encoding "<unk>" + text
            # and cutting the "<unk>" pieces keeps it (what LlamaTokenizer does).
            shift = len(self.unk_token)
            text = self.unk_token + text
        proto = self._sp_encode.encode(text, out_type="proto")
        pieces = proto.pieces[self._unk_len :] if shift else proto.pieces
        ids = [p.id for p in pieces]
        begins = np.minimum(np.asarray([p.begin for p in pieces], np.int64), len(text.encode("utf-8")))
        return ids, _byte_to_char(text)[begins] - shift

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of `text` (no BOS) and, per token, the index of its first character in
        `text` (clamped to [0, len(text)-1]; the legacy=False "▁" prefix maps to 0)."""
        if not text:
            return [], []
        if self.legacy:
            work, shift = text, 0
        else:
            work, shift = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), 1
        ids: list[int] = []
        starts: list[np.ndarray] = []
        pos = 0
        parts = self._split_re.split(work) if self._split_re else [work]
        for i, part in enumerate(parts):
            if not part:
                continue
            if i % 2 == 1:  # a special token matched by the split pattern
                ids.append(self.convert_tokens_to_ids(part))
                starts.append(np.asarray([pos]))
            else:
                part_ids, part_starts = self._encode_text(part)
                ids += part_ids
                starts.append(part_starts + pos)
            pos += len(part)
        offsets = np.clip(np.concatenate(starts) - shift, 0, len(text) - 1).tolist()
        # LlamaTokenizer.tokenize: drop the prefix "▁" when a special token follows it.
        if (not self.legacy and len(ids) > 1 and ids[0] == self.sp.piece_to_id(SPIECE_UNDERLINE)
                and offsets[0] == 0 and ids[1] in self._special_ids()):
            ids, offsets = ids[1:], offsets[1:]
        return ids, offsets

    def _special_ids(self) -> set[int]:
        return {self.convert_tokens_to_ids(t) for t in self._specials}

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.encode_with_offsets(text)[0]
        return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out, run = [], []
        n = self.sp.get_piece_size()
        for i in (int(x) for x in ids):
            special = i in self._added_by_id or i >= n or self.sp.is_control(i)
            if not special:
                run.append(i)
                continue
            if run:
                out.append(self.sp.decode(run))
                run = []
            if not skip_special_tokens:
                out.append(self.id_to_piece(i))
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)


def _byte_to_char(text: str) -> np.ndarray:
    """Map each UTF-8 byte offset of `text` (plus the end) to a character index."""
    n = len(text)
    if text.isascii():
        return np.arange(n + 1)
    code = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    nbytes = 1 + (code >= 0x80) + (code >= 0x800) + (code >= 0x10000)
    return np.append(np.repeat(np.arange(n), nbytes), n)


class HFTokenizer:
    """A `transformers` (tokenizers-backed) tokenizer; `.hf` gives `apply_chat_template`."""

    kind = "hf"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer

    @property
    def image_chunks(self) -> bool:
        # With `<image>` in the vocabulary the whole prompt is tokenized at once (llava-hf);
        # otherwise LLaVA-style: the text between images is tokenized call by call.
        return self.convert_tokens_to_ids(IMAGE_TOKEN) is None

    bos_token = property(lambda self: self.hf.bos_token)
    eos_token = property(lambda self: self.hf.eos_token)
    bos_id = property(lambda self: self.hf.bos_token_id)
    eos_id = property(lambda self: self.hf.eos_token_id)
    unk_id = property(lambda self: self.hf.unk_token_id)

    @property
    def pad_id(self) -> int:
        for idx in (self.hf.pad_token_id, self.hf.unk_token_id, self.hf.eos_token_id):
            if idx is not None:
                return idx
        return 0

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        idx = self.hf.convert_tokens_to_ids(token)
        if idx is None or (idx == self.hf.unk_token_id and token != self.hf.unk_token):
            return None
        return idx

    def id_to_piece(self, idx: int) -> str:
        return self.hf.convert_ids_to_tokens(int(idx))

    def add_special_token(self, token: str) -> int:
        from tokenizers import AddedToken

        if self.convert_tokens_to_ids(token) is None:
            self.hf.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
        return self.convert_tokens_to_ids(token)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        if not text:
            return [], []
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        last = len(text) - 1
        return list(enc["input_ids"]), [min(max(s, 0), last) for s, _ in enc["offset_mapping"]]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = list(self.hf(text, add_special_tokens=False)["input_ids"]) if text else []
        return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


Tokenizer = SentencePieceTokenizer | HFTokenizer


def _legacy_setting(cfg: dict) -> bool:
    if cfg.get("legacy") is not None:
        return bool(cfg["legacy"])
    return bool(cfg)


def load_tokenizer(path: str, *, backend: str | None = None, legacy: bool | None = None) -> Tokenizer:
    """Load `path`: a SentencePiece `.model` file, or a folder.

    A folder with `tokenizer.model` loads through SentencePiece (what LLaVA's slow tokenizer
    does) unless `backend="hf"`; otherwise `transformers.AutoTokenizer` (local files only).
    `legacy` defaults to the folder's tokenizer_config.json setting; a config without one means
    True (the slow LlamaTokenizer's default), no config at all means False (Vicuna-1.5, Llama-2).
    Added tokens (e.g. llava-hf's `<image>`) come from tokenizer_config.json / added_tokens.json.
    """
    if os.path.isfile(path):
        if backend == "hf":
            raise ValueError(f"{path} is a file; the hf backend needs a tokenizer folder")
        return SentencePieceTokenizer(path, legacy=bool(legacy))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no tokenizer at {path}")
    sp_file = os.path.join(path, "tokenizer.model")
    if backend is None:
        backend = "sentencepiece" if os.path.exists(sp_file) else "hf"
    if backend == "sentencepiece":
        cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
        added = {k: int(v) for k, v in _read_json(os.path.join(path, "added_tokens.json")).items()}
        for idx, tok in (cfg.get("added_tokens_decoder") or {}).items():
            added[_token_content(tok)] = int(idx)
        return SentencePieceTokenizer(
            sp_file,
            legacy=_legacy_setting(cfg) if legacy is None else legacy,
            bos_token=_token_content(cfg.get("bos_token")),
            eos_token=_token_content(cfg.get("eos_token")),
            unk_token=_token_content(cfg.get("unk_token")),
            pad_token=_token_content(cfg.get("pad_token")),
            added_tokens=added,
        )
    if backend != "hf":
        raise ValueError(f"unknown tokenizer backend {backend!r}")
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True))


def image_token_id(tokenizer: Tokenizer, token: str = IMAGE_TOKEN) -> int | None:
    """Id of the image placeholder token in the vocabulary, or None if it has none."""
    return tokenizer.convert_tokens_to_ids(token)


def add_image_token(tokenizer: Tokenizer, token: str = IMAGE_TOKEN) -> int:
    """Make sure `token` is a special token (HF-LLaVA vocabularies: id = old vocab size)."""
    return tokenizer.add_special_token(token)
