"""Non-weight files of a checkpoint folder: tokenizer files, small JSON side files, size strings."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from typing import Optional

TOKENIZER_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                      "merges.txt", "*.model", "*.tiktoken", "chat_template.json", "chat_template.jinja",
                      "processor_config.json")


def copy_tokenizer(src: str, dst: str) -> bool:
    """Copy the tokenizer/processor files of folder `src` into `dst`; False if there are none."""
    if not os.path.isdir(src):
        return False
    names = [n for n in sorted(os.listdir(src)) if os.path.isfile(os.path.join(src, n))
             and any(fnmatch.fnmatch(n, p) for p in TOKENIZER_PATTERNS)]
    if not names:
        return False
    os.makedirs(dst, exist_ok=True)
    for n in names:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))
    return True


def tokenizer_config_for_both(folder: str) -> None:
    """Rewrite a transformers-5 `tokenizer_config.json` of an export folder in the form transformers 4 also
    loads (5 reads both the same): its generic class TokenizersBackend is 4's PreTrainedTokenizerFast, and 5's
    `extra_special_tokens` list / `model_specific_special_tokens` dict are 4's `additional_special_tokens` /
    `extra_special_tokens` (4 takes the latter as a dict and fails on a list)."""
    path = os.path.join(folder, "tokenizer_config.json")
    conf = read_json(path)
    if conf is None:
        return
    new = dict(conf)
    if new.get("tokenizer_class") == "TokenizersBackend":
        new["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(new.get("extra_special_tokens"), list):
        listed = new.pop("extra_special_tokens")
        new.setdefault("additional_special_tokens", listed)
        new["extra_special_tokens"] = new.pop("model_specific_special_tokens", None) or {}
    if new != conf:
        write_json(path, new)


class BadJson(ValueError):
    pass


def read_json(path: str) -> Optional[dict]:
    """A JSON object file, None if there is none; BadJson naming the file if it is not one."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BadJson(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise BadJson(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise BadJson(f"{path}: a JSON object is needed, got {type(data).__name__}")
    return data


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '123' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid size '{text}' (e.g. 5GB, 500MB, 1000000)")
    base = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * base**power)
