"""Answer a LLaVA `model_vqa` question file (or a multilingual folder of them) and score the answers.

    python -m infer.evaluate --checkpoint CKPT --questions question.jsonl --image-folder DIR \\
        --answers answers.jsonl [--num-chunks N --chunk-idx I] [--batch-size B]

Questions: one JSON object a line with `question_id`, `text`, optional `image` and `category`, and
optionally a ground truth (`answer`, `answers`, `label` or `gt_answer`). Answers: `question_id`,
`prompt`, `text`, `answer_id`, `model_id`, `metadata`, appended batch by batch as they are generated; a
re-run skips questions already answered. Without `<image>` in the text, the image goes first
("<image>\\n" + text), as LLaVA's model_vqa does.

A question that cannot be asked (an unreadable image, a tag/image-count mismatch, an empty question, a
prompt longer than the model's context) gets a record with an empty `text` and an `error` naming the
reason; the others are answered, and the run exits 1 with the count of failed questions. A re-run asks
the failed questions again.

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
from typing import Optional

from infer import answers as answers_lib
from infer import options, scorers

GT_KEYS = ("answer", "answers", "label", "gt_answer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_options(p)
    p.add_argument("--questions", required=True, help="question.jsonl, or a folder of <language>/question.jsonl")
    p.add_argument("--image-folder", default="", help="image paths are relative to this")
    p.add_argument("--answers", required=True, help="answers.jsonl (a folder in multilingual mode)")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    options.add_decoding_options(p, max_new_tokens=128)
    p.add_argument("--scorer", default="auto", choices=["auto", *scorers.SCORERS, "none"])
    p.add_argument("--model-id", help="model_id written in the answers (default: the checkpoint folder name)")
    return p


def get_chunk(items: list, n: int, k: int) -> list:
    """LLaVA's split_list/get_chunk: n contiguous chunks of ceil(len/n)."""
    size = math.ceil(len(items) / n) if items else 1
    return items[k * size : (k + 1) * size]


def read_jsonl(path: str) -> list[dict]:
    """The JSON objects of a file, one a line (lines that are not one are skipped)."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line) if line.strip() else None
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                out.append(rec)
    return out


def read_questions(path: str) -> list[dict]:
    """A question file, checked whole: exits 2 naming the file and line of the first bad question."""
    out, seen = [], {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as e:
        options.fail(f"{path}: cannot read questions: {e}")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except ValueError:
            q = None
        where = f"{path}:{n}"
        if not isinstance(q, dict):
            options.fail(f"{where}: not a JSON object")
        qid = q.get("question_id")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            options.fail(f"{where}: question_id must be a string or an integer, got {qid!r}")
        if qid in seen:
            options.fail(f"{where}: question_id {qid!r} again (first on line {seen[qid]})")
        seen[qid] = n
        if not isinstance(q.get("text"), str):
            options.fail(f"{where}: question {qid!r} needs a string text")
        ims = q.get("images")
        if (q.get("image") is not None and not isinstance(q["image"], str)) or (
                ims is not None and not (isinstance(ims, list) and all(isinstance(i, str) for i in ims))):
            options.fail(f"{where}: question {qid!r}: image must be a path, images a list of paths")
        out.append(q)
    return out


def image_paths(q: dict) -> list[str]:
    return [q["image"]] if q.get("image") else list(q.get("images") or [])


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


def answer_questions(args, m, template, sc, questions: list[dict], out_path: str, image_folder: str,
                     desc: str) -> int:
    """Append the answers of the questions not answered yet to out_path -> answers cut at the context."""
    from tqdm import tqdm

    from infer import runner

    try:
        done, _ = answers_lib.resume(out_path)
    except answers_lib.AnswersFileError as e:
        options.fail(str(e))
    todo = [q for q in questions if q["question_id"] not in done]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    model_id = args.model_id or m.name
    rows_per_batch = min(args.batch_size, len(todo))  # one compiled shape, never more rows than questions
    cut = 0
    bar = tqdm(total=len(questions), initial=len(questions) - len(todo), desc=desc, unit="q", file=sys.stderr)
    with open(out_path, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), args.batch_size):
            part = todo[start : start + args.batch_size]
            rows, errors = [], {}
            for i, q in enumerate(part):
                try:
                    rows.append(runner.prepare(m, template, q["text"],
                                               [os.path.join(image_folder, p) for p in image_paths(q)]))
                except runner.BadPrompt as e:
                    errors[i] = str(e)
            outs = iter(runner.run(m, template, rows, sc, args.seed + start, num_rows=rows_per_batch) if rows else [])
            prompts = iter(rows)
            records = []
            for i, q in enumerate(part):
                if i in errors:
                    records.append(answers_lib.record(q, "", model_id, error=errors[i]))
                    continue
                ids, (prompt, _) = next(outs), next(prompts)
                cut += len(ids) == runner.room(m, prompt) < sc.max_new_tokens
                records.append(answers_lib.record(q, runner.decode_text(m, template, ids), model_id))
            answers_lib.append(out, records)
            bar.update(len(part))
    bar.close()
    return cut


def score_answers(questions: list[dict], answers_path: str, kind: str) -> dict:
    """{"overall": {...}, "categories": {cat: {...}}} over the answered questions with a ground truth."""
    recs = read_jsonl(answers_path) if os.path.exists(answers_path) else []
    answers = {a["question_id"]: a.get("text", "") for a in recs if "error" not in a}
    failed = {a["question_id"]: a["error"] for a in recs if "error" in a}
    rows = [(q, answers[q["question_id"]]) for q in questions if q["question_id"] in answers]
    scored = [(q, a) for q, a in rows if ground_truth(q) is not None]
    out = {"answered": len(rows), "questions": len(questions)}
    errors = [(q["question_id"], failed[q["question_id"]]) for q in questions if q["question_id"] in failed]
    if errors:
        out["failed"] = len(errors)
        out["first_error"] = {"question_id": errors[0][0], "error": errors[0][1]}
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
    metric = {"exact": "exact_match", "text": "exact_match", "vqa": "vqa_accuracy"}.get(o["scorer"], "accuracy")
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
    multilingual = os.path.isdir(args.questions)
    if multilingual and os.path.exists(args.answers) and not os.path.isdir(args.answers):
        options.fail(f"--answers {args.answers} is a file; with a folder of questions it is the answers folder")
    if not multilingual and os.path.isdir(args.answers):
        options.fail(f"--answers {args.answers} is a folder; give the answers .jsonl file")
    if multilingual:
        languages = sorted(d for d in os.listdir(args.questions)
                           if os.path.isfile(os.path.join(args.questions, d, "question.jsonl")))
        if not languages:
            parser.error(f"{args.questions} has no <language>/question.jsonl")
        sets = [(lang, os.path.join(args.questions, lang, "question.jsonl")) for lang in languages]
    elif os.path.isfile(args.questions):
        sets = [(None, args.questions)]
    else:
        parser.error(f"--questions {args.questions}: no such file or folder")
    questions = {lang: get_chunk(read_questions(path), args.num_chunks, args.chunk_idx) for lang, path in sets}

    wanted = [os.path.join(_image_folder(args, lang), im) for lang, qs in questions.items() for q in qs
              for im in image_paths(q)]
    missing = [p for p in wanted if not os.path.isfile(p)]
    if missing and len(missing) == len(wanted):  # none there: the folder is wrong (a few: those questions fail)
        parser.error(f"{len(missing)} images not found, e.g. {missing[0]} (check --image-folder)")

    m, template, sc = options.load(args)

    summary, cut = {}, 0
    for lang, qs in questions.items():
        path = answer_file(args, lang)
        cut += answer_questions(args, m, template, sc, qs, path, _image_folder(args, lang), desc=lang or "eval")
        summary[lang or "all"] = score_answers(qs, path, args.scorer)

    result = summary if len(summary) > 1 or "all" not in summary else summary["all"]
    with open(scores_path(args.answers), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"{'language' if len(sets) > 1 or sets[0][0] else 'set':<10} {'answered':>9}  score")
    for name, s in summary.items():
        failed = f"  ({s['failed']} failed)" if s.get("failed") else ""
        print(f"{name:<10} {s['answered']:>4}/{s['questions']:<4}  {_headline(s)}{failed}")
    print(f"answers: {args.answers}  scores: {scores_path(args.answers)}", file=sys.stderr)
    from infer import runner

    if cut:
        print(f"warning: {cut} answer{'s' * (cut > 1)} cut at the model's context of {runner.context_length(m)} "
              f"tokens (prompt + --max-new-tokens {args.max_new_tokens} is longer)", file=sys.stderr)
    failed = sum(s.get("failed", 0) for s in summary.values())
    if failed:
        first = next(s["first_error"] for s in summary.values() if s.get("failed"))
        print(f"error: {failed} of {sum(s['questions'] for s in summary.values())} questions failed (their records "
              f"in {args.answers} have an `error`; a rerun asks them again), e.g. question {first['question_id']!r}: "
              f"{first['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
