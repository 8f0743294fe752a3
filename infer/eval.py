"""Answer a LLaVA `model_vqa` question file (or a multilingual folder of them) and score the answers.

    python -m infer.eval --checkpoint CKPT --questions question.jsonl --image-folder DIR \\
        --answers answers.jsonl [--num-chunks N --chunk-idx I] [--batch-size B]

Questions: one JSON object a line with `question_id`, `text`, optional `image` and `category`, and
optionally a ground truth (`answer`, `answers`, `label` or `gt_answer`). Answers: `question_id`,
`prompt`, `text`, `answer_id`, `model_id`, `metadata`, appended as they are generated; a re-run skips
questions already answered. Without `<image>` in the text, the image goes first ("<image>\\n" + text),
as LLaVA's model_vqa does.

`--questions DIR` in PALO's layout (`DIR/<language>/question.jsonl`) is evaluated language by
language into `--answers OUT/` (`OUT/<language>.jsonl`; images from `IMAGE_FOLDER/<language>/` when
that exists, else `IMAGE_FOLDER/`), with one summary table. Scores (questions with a ground truth;
per language and per category) go to `<answers without .jsonl>.scores.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import uuid
from typing import Optional

from infer import options

GT_KEYS = ("answer", "answers", "label", "gt_answer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_options(p)
    p.add_argument("--questions", required=True, help="question.jsonl, or a folder of <language>/question.jsonl")
    p.add_argument("--image-folder", default="", help="image paths are relative to this")
    p.add_argument("--answers", required=True, help="answers.jsonl (a folder in multilingual mode)")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    options.add_decoding_options(p, max_new_tokens=128)
    p.add_argument("--scorer", default="auto", choices=["auto", "exact", "vqa", "pope", "mc", "none"])
    p.add_argument("--model-id", help="model_id written in the answers (default: the checkpoint folder name)")
    return p


def get_chunk(items: list, n: int, k: int) -> list:
    """LLaVA's split_list/get_chunk: n contiguous chunks of ceil(len/n)."""
    size = math.ceil(len(items) / n) if items else 1
    return items[k * size : (k + 1) * size]


def read_jsonl(path: str, parser=None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                if parser:
                    parser.error(f"{path}:{n}: not a JSON object")
                continue
            out.append(rec)
    return out


def ground_truth(q: dict):
    for k in GT_KEYS:
        if q.get(k) is not None:
            return q[k]
    return None


def answer_file(args, language: Optional[str]) -> str:
    return os.path.join(args.answers, f"{language}.jsonl") if language else args.answers


def scores_path(answers: str) -> str:
    base = answers[: -len(".jsonl")] if answers.endswith(".jsonl") else answers.rstrip("/")
    return base + ".scores.json"


def answer_questions(args, m, template, sc, questions: list[dict], out_path: str, image_folder: str, desc: str):
    from tqdm import tqdm

    from infer import runner

    done = set()
    if os.path.exists(out_path):
        done = {a.get("question_id") for a in read_jsonl(out_path)}
    todo = [q for q in questions if q["question_id"] not in done]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    bar = tqdm(total=len(questions), initial=len(questions) - len(todo), desc=desc, unit="q", file=sys.stderr)
    with open(out_path, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), args.batch_size):
            part = todo[start : start + args.batch_size]
            rows = []
            for q in part:
                ims = [q["image"]] if q.get("image") else list(q.get("images") or [])
                rows.append((runner.prompt_ids(m, template, q["text"], len(ims)),
                             [runner.load_image(m, os.path.join(image_folder, p)) for p in ims]))
            outs = runner.run(m, template, rows, sc, args.seed + start, num_rows=args.batch_size)
            for q, ids in zip(part, outs):
                rec = {"question_id": q["question_id"], "prompt": q["text"], "text": runner.decode_text(m, template, ids),
                       "answer_id": uuid.uuid4().hex[:22], "model_id": args.model_id or m.name, "metadata": {}}
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
            bar.update(len(part))
    bar.close()


def score_answers(questions: list[dict], answers_path: str, kind: str) -> dict:
    """{"overall": {...}, "categories": {cat: {...}}} over the answered questions with a ground truth."""
    from infer import scorers

    answers = {a["question_id"]: a["text"] for a in read_jsonl(answers_path)} if os.path.exists(answers_path) else {}
    rows = [(q, answers[q["question_id"]]) for q in questions if q["question_id"] in answers]
    scored = [(q, a) for q, a in rows if ground_truth(q) is not None]
    out = {"answered": len(rows), "questions": len(questions)}
    if kind == "none" or not scored:
        return out
    gts = [ground_truth(q) for q, _ in scored]
    kind = scorers.detect_kind(gts) if kind == "auto" else kind
    out["overall"] = scorers.score(kind, [a for _, a in scored], gts)
    cats = sorted({str(q["category"]) for q, _ in scored if q.get("category") is not None})
    if cats:
        out["categories"] = {c: scorers.score(kind, [a for q, a in scored if str(q.get("category")) == c],
                                              [ground_truth(q) for q, _ in scored if str(q.get("category")) == c])
                             for c in cats}
    return out


def _headline(s: dict) -> str:
    o = s.get("overall")
    if not o:
        return "-"
    metric = {"exact": "exact_match", "vqa": "vqa_accuracy"}.get(o["scorer"], "accuracy")
    extra = f" f1 {o['f1']:.3f} yes {o['yes_ratio']:.2f}" if o["scorer"] == "pope" else ""
    return f"{o['scorer']} {100 * o[metric]:.2f}{extra}"


def _image_folder(args, language: Optional[str]) -> str:
    if language and os.path.isdir(os.path.join(args.image_folder, language)):
        return os.path.join(args.image_folder, language)
    return args.image_folder


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        parser.error("need --num-chunks >= 1 and 0 <= --chunk-idx < --num-chunks")
    options.check(args, parser)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if os.path.isdir(args.questions):
        languages = sorted(d for d in os.listdir(args.questions)
                           if os.path.isfile(os.path.join(args.questions, d, "question.jsonl")))
        if not languages:
            parser.error(f"{args.questions} has no <language>/question.jsonl")
        sets = [(lang, os.path.join(args.questions, lang, "question.jsonl")) for lang in languages]
    elif os.path.isfile(args.questions):
        sets = [(None, args.questions)]
    else:
        parser.error(f"--questions {args.questions}: no such file or folder")
    questions = {lang: get_chunk(read_jsonl(path, parser), args.num_chunks, args.chunk_idx) for lang, path in sets}
    for lang, qs in questions.items():
        for q in qs:
            if not isinstance(q.get("text"), str) or "question_id" not in q:
                parser.error(f"{lang or args.questions}: question {q.get('question_id')!r} needs question_id and text")

    missing = [os.path.join(_image_folder(args, lang), im) for lang, qs in questions.items() for q in qs
               for im in ([q["image"]] if q.get("image") else list(q.get("images") or []))
               if not os.path.isfile(os.path.join(_image_folder(args, lang), im))]
    if missing:
        parser.error(f"{len(missing)} images not found, e.g. {missing[0]} (check --image-folder)")

    m, template, sc = options.load(args)

    summary = {}
    for lang, qs in questions.items():
        path = answer_file(args, lang)
        answer_questions(args, m, template, sc, qs, path, _image_folder(args, lang), desc=lang or "eval")
        summary[lang or "all"] = score_answers(qs, path, args.scorer)

    result = summary if len(summary) > 1 or "all" not in summary else summary["all"]
    with open(scores_path(args.answers), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"{'language' if len(sets) > 1 or sets[0][0] else 'set':<10} {'answered':>9}  score")
    for name, s in summary.items():
        print(f"{name:<10} {s['answered']:>4}/{s['questions']:<4}  {_headline(s)}")
    print(f"answers: {args.answers}  scores: {scores_path(args.answers)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
