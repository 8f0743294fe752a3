"""The demo dataset folder: writing it, its manifest, and deciding whether it can be reused.

Output folder (`write_dataset`):
    align.json, sft.json          LLaVA JSON (stage 1 captions of the single-object images, stage 2
                                  conversations about every image + text-only)
    images/NNNNNN.png             training images (shared by align and sft example NNNNNN)
    eval/images/NNNN.png          held-out images
    eval/<language>/question.jsonl, answers.jsonl   PALO's multilingual LLaVA-Bench layout
    manifest.json                 parameters + content hash; written last, marks completion
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Callable, Optional

from demo.languages import LANGUAGES
from demo.world import CATEGORIES, GENERATOR_VERSION, Params, make_eval_item, make_train_example

MANIFEST = "manifest.json"


def _dump_json_list(records) -> bytes:
    # One record per line: readable, diffable, still a plain JSON list.
    return ("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n").encode()


def _dump_jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


class _Writer:
    """Writes files under `root` and folds them into a content hash that `dataset_hash` can recompute."""

    def __init__(self, root: str):
        self.root = root
        self.digests: dict = {}

    def write(self, rel: str, data: bytes):
        path = os.path.join(self.root, rel)
        with open(path, "wb") as f:
            f.write(data)
        self.digests[rel] = hashlib.sha256(data).hexdigest()

    def content_hash(self) -> str:
        return _combine(self.digests)


def _combine(digests: dict) -> str:
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\t{digests[rel]}\n".encode())
    return h.hexdigest()


def dataset_files(root: str, manifest: dict) -> list[str]:
    """Relative paths of every file a complete dataset holds."""
    n, n_eval = manifest["params"]["num_train"], manifest["params"]["num_eval"]
    files = ["align.json", "sft.json"] + [f"images/{i:06d}.png" for i in range(n)]
    files += [f"eval/images/{i:04d}.png" for i in range(n_eval)]
    for lang in LANGUAGES.values():
        files += [f"eval/{lang.name}/question.jsonl", f"eval/{lang.name}/answers.jsonl"]
    return files


def dataset_hash(root: str, manifest: dict) -> str:
    digests = {}
    for rel in dataset_files(root, manifest):
        with open(os.path.join(root, rel), "rb") as f:
            digests[rel] = hashlib.sha256(f.read()).hexdigest()
    return _combine(digests)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_manifest(root: str) -> Optional[dict]:
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def recorded_params(manifest: dict) -> dict:
    """The manifest's params, with fields added to Params since it was written at today's defaults:
    a new field whose default changes the bytes comes with a new GENERATOR_VERSION, so one that did
    not leaves a dataset written before it as it is."""
    return {**dataclasses.asdict(Params()), **manifest.get("params", {})}


def is_complete(root: str, params: Params, verify: bool = False) -> bool:
    """True if `root` holds a finished dataset made by this generator version with `params`.
    Without `verify` only file presence is checked; with it, the content hash too."""
    m = read_manifest(root)
    if not m or m.get("generator_version") != GENERATOR_VERSION or recorded_params(m) != dataclasses.asdict(params):
        return False
    if not all(os.path.isfile(os.path.join(root, rel)) for rel in dataset_files(root, m)):
        return False
    return not verify or dataset_hash(root, m) == m.get("content_hash")


def _train_chunk(args):
    params, indices = args
    return [make_train_example(params, i) for i in indices]


def write_dataset(root: str, params: Params = Params(), workers: int = 1,
                  progress: Optional[Callable[[int], None]] = None) -> dict:
    """Generate the dataset into `root` (reusing it if already complete) and return its manifest.

    `progress(n)` is called as n more train examples / eval items are done; total = `num_items(params)`.
    """
    params.validate()
    if is_complete(root, params):
        return read_manifest(root)
    if os.path.exists(os.path.join(root, MANIFEST)):
        os.remove(os.path.join(root, MANIFEST))
    for sub in ["images", "eval/images"] + [f"eval/{lang.name}" for lang in LANGUAGES.values()]:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    out = _Writer(root)

    total = params.num_train + params.num_text_only
    chunks = [(params, range(s, min(s + 256, total))) for s in range(0, total, 256)]
    align, sft = [], []
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers)
    try:
        results = pool.imap(_train_chunk, chunks) if pool else map(_train_chunk, chunks)
        for chunk in results:  # imap keeps order, so the bytes do not depend on `workers`
            for ex in chunk:
                if ex.png is not None:
                    out.write("images/" + ex.image_name, ex.png)
                if ex.align is not None:
                    align.append(ex.align)
                sft.append(ex.sft)
            if progress:
                progress(len(chunk))
    finally:
        if pool:
            pool.close()
            pool.join()
    random.Random(f"{params.seed}/shuffle").shuffle(sft)  # interleave text-only examples
    out.write("align.json", _dump_json_list(align))
    out.write("sft.json", _dump_json_list(sft))

    questions = {code: [] for code in LANGUAGES}
    answers = {code: [] for code in LANGUAGES}
    for i in range(params.num_eval):
        item = make_eval_item(params, i)
        out.write("eval/images/" + item.image_name, item.png)
        for code, (q, a) in item.qa.items():
            questions[code].append({"question_id": i, "image": item.image_name, "text": q, "category": item.category})
            answers[code].append({"question_id": i, "text": a, "category": item.category})
        if progress:
            progress(1)
    for code, lang in LANGUAGES.items():
        out.write(f"eval/{lang.name}/question.jsonl", _dump_jsonl(questions[code]))
        out.write(f"eval/{lang.name}/answers.jsonl", _dump_jsonl(answers[code]))

    manifest = {
        "generator_version": GENERATOR_VERSION,
        "params": dataclasses.asdict(params),
        "counts": {"align": len(align), "sft": len(sft), "sft_text_only": total - params.num_train,
                   "eval_per_language": params.num_eval, "files": len(out.digests)},
        "languages": {code: lang.name for code, lang in LANGUAGES.items()},
        "categories": list(CATEGORIES),
        "image_folder": "images",
        "eval_image_folder": "eval/images",
        "content_hash": out.content_hash(),
    }
    with open(os.path.join(root, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
    return manifest


def num_items(params: Params) -> int:
    """Total progress units of `write_dataset`."""
    return params.num_train + params.num_text_only + params.num_eval
