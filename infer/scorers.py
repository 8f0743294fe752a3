"""Scorers for generated answers: exact match / VQA accuracy, POPE yes-no, multiple-choice letters,
and a language-neutral exact match (`text`: any script, e.g. PALO's ten languages).

Each scorer takes parallel lists of predictions and ground truths and returns a dict of metrics in
[0, 1] plus `n`. `score(kind, ...)` dispatches; `detect_kind` picks one from the ground truths.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

# VQA v2 evaluation normalisation (vqaEval.py), slightly condensed
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "im": "i'm", "ive": "i've", "youre": "you're", "thats": "that's",
                 "whats": "what's", "wasnt": "wasn't", "werent": "weren't", "couldnt": "couldn't",
                 "shouldnt": "shouldn't", "wouldnt": "wouldn't", "hasnt": "hasn't", "havent": "haven't"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:']")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUM = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    text = str(text).replace("\n", " ").replace("\t", " ").strip().lower()
    text = _COMMA_NUM.sub(r"\1\3", text)
    text = _PUNCT.sub(" ", _PERIOD.sub("", text))
    words = []
    for w in text.split():
        w = _NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def normalize_text(text: str) -> str:
    """Language-neutral: NFKC, casefold, collapse whitespace, strip punctuation at both ends (incl. 。？।۔؟)."""
    text = " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())
    is_edge = lambda ch: ch.isspace() or unicodedata.category(ch).startswith("P")  # noqa: E731
    start, end = 0, len(text)
    while start < end and is_edge(text[start]):
        start += 1
    while end > start and is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def same_text(prediction: str, reference: str) -> bool:
    return normalize_text(prediction) == normalize_text(reference)


def _as_list(gt) -> list[str]:
    if isinstance(gt, (list, tuple)):
        return [g["answer"] if isinstance(g, dict) else str(g) for g in gt]
    return [str(gt)]


def exact_match(preds: Sequence[str], gts: Sequence) -> dict:
    hits = [normalize_answer(p) in {normalize_answer(g) for g in _as_list(gt)} for p, gt in zip(preds, gts)]
    return {"exact_match": sum(hits) / max(len(hits), 1), "n": len(hits)}


def text_match(preds: Sequence[str], gts: Sequence) -> dict:
    hits = [any(same_text(p, g) for g in _as_list(gt)) for p, gt in zip(preds, gts)]
    return {"exact_match": sum(hits) / max(len(hits), 1), "n": len(hits)}


def vqa_accuracy_one(pred: str, answers: Sequence[str]) -> float:
    """VQA v2: min(1, matches / 3), averaged over the leave-one-annotator-out subsets."""
    p = normalize_answer(pred)
    answers = [normalize_answer(a) for a in answers]
    if len(answers) < 2:
        return float(bool(answers) and p == answers[0])
    accs = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1 :]
        accs.append(min(1.0, sum(a == p for a in others) / 3.0))
    return sum(accs) / len(accs)


def vqa_accuracy(preds: Sequence[str], gts: Sequence) -> dict:
    accs = [vqa_accuracy_one(p, _as_list(gt)) for p, gt in zip(preds, gts)]
    return {"vqa_accuracy": sum(accs) / max(len(accs), 1), "n": len(accs)}


def yes_no(text: str) -> str:
    """LLaVA's eval_pope: the first sentence; 'no' if it says no/not, else 'yes'."""
    first = str(text).split(".")[0].replace(",", "")
    words = first.lower().split()
    return "no" if ("no" in words or "not" in words) else "yes"


def pope(preds: Sequence[str], gts: Sequence) -> dict:
    tp = fp = tn = fn = 0
    for p, gt in zip(preds, gts):
        pred, label = yes_no(p) == "yes", str(gt).strip().lower() in ("yes", "1", "true")
        tp += pred and label
        fp += pred and not label
        tn += (not pred) and (not label)
        fn += (not pred) and label
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / max(n, 1), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / max(n, 1), "n": n}


_LETTER_PATTERNS = [
    re.compile(r"^\(([A-Z])\)"),  # "(B) ..."
    re.compile(r"^([A-Z])(?:[.,:)]|$)"),  # "A", "A.", "C: ..." (not "I think ...")
    re.compile(r"answer is:?\s*\(?([A-Z])\)?(?:[.,:)\s]|$)", re.IGNORECASE),
    re.compile(r"\b(?:option|choice)\s*\(?([A-Z])\)?\b", re.IGNORECASE),
]


def choice_letter(text: str) -> str | None:
    """The option letter a free-form answer picks (ScienceQA / MMBench style), or None."""
    text = str(text).strip()
    for pat in _LETTER_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1).upper()
    return None


def multiple_choice(preds: Sequence[str], gts: Sequence) -> dict:
    letters = [choice_letter(p) for p in preds]
    hits = [letter is not None and letter == str(gt).strip().upper().strip("().") for letter, gt in zip(letters, gts)]
    return {"accuracy": sum(hits) / max(len(hits), 1), "unparsed": sum(x is None for x in letters) / max(len(hits), 1),
            "n": len(hits)}


SCORERS = {"exact": exact_match, "text": text_match, "vqa": vqa_accuracy, "pope": pope, "mc": multiple_choice}


def detect_kind(gts: Sequence) -> str:
    """vqa for lists of annotator answers, pope for yes/no labels, mc for single letters, else exact."""
    if gts and all(isinstance(g, (list, tuple)) for g in gts):
        return "vqa"
    values = {str(g).strip().lower() for g in gts}
    if values and values <= {"yes", "no"}:
        return "pope"
    if values and all(re.fullmatch(r"\(?[a-z]\)?\.?", v) for v in values):
        return "mc"
    return "exact"


def score(kind: str, preds: Sequence[str], gts: Sequence) -> dict:
    if kind == "auto":
        kind = detect_kind(gts)
    if kind not in SCORERS:
        raise ValueError(f"unknown scorer {kind!r} (known: auto, {', '.join(SCORERS)})")
    return {"scorer": kind, **SCORERS[kind](preds, gts)}
