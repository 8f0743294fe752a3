"""Train a LLaMA-style SentencePiece tokenizer and save it as a folder `AutoTokenizer` loads.

    python -m tools.train_tokenizer --data DIR [--out DIR/tokenizer] [--vocab-size 3000]

DIR is a dataset written by `demo.make_data` (its align.json and sft.json are the corpus);
`--json FILE` (repeatable) trains on any LLaVA JSON files instead.

The model is BPE with byte fallback (any text round-trips), identity normalisation, no
whitespace folding, a dummy prefix and split digits, as LLaMA's. Ids: <unk>=0 <s>=1 </s>=2
<pad>=3 <image>=4 (a control piece: SentencePiece never produces it from text; the HF tokenizer
treats the literal "<image>" as that special token, as HF LLaVA processors expect).

Known difference between HF (transformers 5) and SentencePiece ids: a text that starts with a
space gets one "▁" fewer from HF (its Metaspace pre-tokenizer does not prepend to text already
starting with one). `check_hf_matches` verifies that nothing else differs on the corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time
from typing import Iterable, Sequence

import sentencepiece as spm

from vlm_jax.data.templates import VICUNA_SYSTEM
from vlm_jax.tokenizer import IMAGE_TOKEN

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN
TOKENIZER_VERSION = 3
# Strings the chat templates add around the data (vicuna_v1, plain), so they get compact pieces;
# "</s>USER:" teaches a "USER" piece without "▁", as it follows the end of a turn.
_DELIMITER = "\ue000"  # a private-use character: never in the corpus
TEMPLATE_LINES = (VICUNA_SYSTEM, "USER:", "ASSISTANT:", "</s>USER:")


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 3000, num_threads: int = 2,
                        split_words: Sequence[str] = ()) -> bytes:
    """Train on `texts` (one sentence each, newlines allowed) and return the model proto. No piece
    learned spans a boundary of a `split_words` word (the trainer sees them pre-split)."""
    lines = [text for text in texts if text]
    if split_words:
        words = re.compile("|".join(re.escape(w) for w in sorted(set(split_words), key=len, reverse=True)))
        lines = [words.sub(lambda m: _DELIMITER + m.group(0) + _DELIMITER, line) for line in lines]
    if not lines:
        raise ValueError("empty tokenizer corpus")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        allow_whitespace_only_pieces=True, max_sentencepiece_length=16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
        control_symbols=[IMAGE], pretokenization_delimiter=_DELIMITER if split_words else "",
        input_sentence_size=0, num_threads=num_threads, minloglevel=2,
    )
    return model.getvalue()


def hf_config(model_max_length: int = 2048) -> tuple[dict, dict]:
    """(tokenizer_config.json, special_tokens_map.json) for a LLaMA tokenizer with `legacy: false`."""
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
               "additional_special_tokens": [IMAGE]}
    added = {str(i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True}
             for i, tok in enumerate((UNK, BOS, EOS, PAD, IMAGE))}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "added_tokens_decoder": added,
        **special,
    }
    return config, special


def save_tokenizer(model_proto: bytes, out_dir: str, info: dict | None = None) -> None:
    """Write tokenizer.model + HF config files (+ tokenizer_manifest.json with `info`)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(model_proto)
    config, special = hf_config()
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
    manifest = {"tokenizer_version": TOKENIZER_VERSION, "vocab_size": spm.SentencePieceProcessor(
        model_proto=model_proto).get_piece_size(), "model_sha256": hashlib.sha256(model_proto).hexdigest(), **(info or {})}
    with open(os.path.join(out_dir, "tokenizer_manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)


def check_hf_matches(tokenizer_dir: str, texts: Iterable[str]) -> list[str]:
    """Texts on which HF `AutoTokenizer` ids (with BOS) differ from SentencePiece's, or that do not
    round-trip through either; empty when all agree."""
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    bad = []
    for text in texts:
        ids = sp.encode(text)
        if hf(text)["input_ids"] != [sp.bos_id()] + ids or sp.decode(ids) != text \
                or hf.decode(ids) != text:
            bad.append(text)
    return bad


def _json_texts(paths: Iterable[str]) -> Iterable[str]:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for record in json.load(f):
                for turn in record["conversations"]:
                    # Keep the "\n" after an image: the first word then learns a piece without "▁".
                    yield turn["value"].replace(IMAGE, "")


def corpus(json_paths: Iterable[str]) -> list[str]:
    texts = list(_json_texts(json_paths))
    # Template strings about as often as the templates will use them (once per conversation turn).
    return texts + list(TEMPLATE_LINES) * max(1, len(texts) // 4)


def tokenizer_is_current(out_dir: str, info: dict) -> bool:
    try:
        with open(os.path.join(out_dir, "tokenizer_manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (manifest.get("tokenizer_version") == TOKENIZER_VERSION and os.path.isfile(
        os.path.join(out_dir, "tokenizer.model")) and all(manifest.get(k) == v for k, v in info.items()))


def build_tokenizer(json_paths: list[str], out_dir: str, vocab_size: int = 3000,
                    force: bool = False, split_words: Sequence[str] = ()) -> tuple[str, bool]:
    """Train and save unless `out_dir` already holds one for the same corpus files, size and
    split words. Returns (out_dir, trained)."""
    info = {"requested_vocab_size": vocab_size, "source_hash": _files_hash(json_paths),
            "split_words": sorted(set(split_words))}
    if not force and tokenizer_is_current(out_dir, info):
        return out_dir, False
    save_tokenizer(train_sentencepiece(corpus(json_paths), vocab_size, split_words=split_words), out_dir, info)
    return out_dir, True


def _files_hash(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.train_tokenizer", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    ap.add_argument("--data", help="dataset folder written by demo.make_data")
    ap.add_argument("--json", action="append", default=[], help="LLaVA JSON file (repeatable)")
    ap.add_argument("--out", help="output folder (default: DATA/tokenizer)")
    ap.add_argument("--vocab-size", type=int, default=3000)
    ap.add_argument("--force", action="store_true", help="retrain even if the output is current")
    ap.add_argument("--check", action="store_true", help="compare HF and SentencePiece ids on the corpus")
    args = ap.parse_args(argv)
    paths = list(args.json)
    if args.data:
        paths += [os.path.join(args.data, n) for n in ("align.json", "sft.json")]
    if not paths or not (args.out or args.data):
        ap.error("give --data DIR, or --json FILE and --out DIR")
    if missing := [p for p in paths if not os.path.isfile(p)]:
        ap.error(f"no such file: {missing[0]}")
    if args.vocab_size < 300:
        ap.error("--vocab-size must be at least 300 (256 byte pieces + specials + characters)")
    out = args.out or os.path.join(args.data, "tokenizer")
    t0 = time.time()
    _, trained = build_tokenizer(paths, out, args.vocab_size, force=args.force)
    print(f"{'trained' if trained else 'reusing'} tokenizer in {out} ({time.time() - t0:.1f}s)")
    if args.check:
        bad = check_hf_matches(out, sorted(set(_json_texts(paths)) | {t.replace("\n", "") for t in _json_texts(paths)}))
        print(f"HF vs SentencePiece: {len(bad)} differing texts" + (f", e.g. {bad[0]!r}" if bad else ""))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
