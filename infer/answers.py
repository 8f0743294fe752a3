"""infer.evaluate's answers file: one JSON object a line, appended one batch at a time.

A rerun continues it: `resume` reads what is there, keeps the answers, drops the failed questions'
records (they are asked again) and a last line cut by a kill (no newline, not valid JSON: the
question is asked again; a whole last line without its newline is kept), rewriting the file only
when it dropped something. A bad line anywhere else was not written by us: refuse, change nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Optional


class AnswersFileError(ValueError):
    """The answers file holds something a rerun must not build on (names the file and line)."""


def record(question: dict, text: str, model_id: str, error: Optional[str] = None) -> dict:
    """LLaVA model_vqa's answer record; a failed question keeps the keys (empty text) plus `error`."""
    rec = {"question_id": question["question_id"], "prompt": question["text"], "text": text,
           "answer_id": uuid.uuid4().hex[:22], "model_id": model_id, "metadata": {}}
    if error is not None:
        rec["error"] = error
    return rec


def _parse(line: bytes) -> Optional[dict]:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("question_id"), (str, int)) else None


def resume(path: str) -> tuple[set, int]:
    """-> (question ids answered without error, failed records dropped); repairs the file in place."""
    if not os.path.exists(path):
        return set(), 0
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    keep, done, dropped, changed = [], set(), 0, False
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rec = _parse(line)
        last = n == len(lines)
        if rec is None:
            if last and not line.endswith(b"\n"):  # cut by a kill mid-write: ask that question again
                changed = True
                continue
            raise AnswersFileError(f"{path}:{n}: not an answer record (a JSON object with a question_id); "
                                   "fix or remove that line, or choose another --answers file")
        if "error" in rec:
            dropped, changed = dropped + 1, True
            continue
        if not line.endswith(b"\n"):
            line, changed = line + b"\n", True
        keep.append(line)
        done.add(rec["question_id"])
    if changed:
        _replace(path, b"".join(keep))
    return done, dropped


def _replace(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def append(out, records: list[dict]) -> None:
    """Write a batch's records as whole lines in one write, then flush."""
    out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out.flush()
