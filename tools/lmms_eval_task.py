"""Write an lmms-eval task for a local LLaVA question file, to evaluate infer.serve with lmms-eval's
OpenAI-compatible backend (lmms-eval's own tasks download their data from a hub):

    python -m tools.lmms_eval_task --questions question.jsonl --image-folder DIR --out TASKDIR [--name NAME]
    python -m infer.serve --checkpoint CKPT --port 8000 &
    python -m lmms_eval --model openai --model_args model=CKPT_NAME,base_url=http://127.0.0.1:8000/v1,api_key=unused \\
        --tasks NAME --include_path TASKDIR --output_path OUT [--limit N]

Questions: LLaVA `model_vqa` lines (`question_id`, `text`, `image`, and a ground truth `answer`
(or `answers` / `label` / `gt_answer`), as infer.evaluate reads). The task asks each question with
its image, greedily, and scores exact match (case and surrounding punctuation ignored) of the
answer; see docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

UTILS = '''"""Written by python -m tools.lmms_eval_task: the questions of a local LLaVA question file."""
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")] if doc.get("image_path") else []


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def _norm(text):
    return str(text).strip().strip(".!?,;:").strip().lower()


def process_results(doc, results):
    return {"exact_match": float(_norm(results[0]) == _norm(doc["answer"]))}
'''

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.lmms_eval_task", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", required=True, help="LLaVA question.jsonl with ground-truth answers")
    p.add_argument("--image-folder", default="", help="image paths in the questions are relative to this")
    p.add_argument("--out", required=True, help="task folder to write (lmms-eval --include_path)")
    p.add_argument("--name", default="vlm_jax_local", help="task name (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    from infer.evaluate import GT_KEYS, ground_truth, read_questions  # the questions as infer.evaluate reads them

    if not os.path.isfile(args.questions):
        p.error(f"--questions {args.questions}: no such file")
    docs = []
    for q in read_questions(args.questions):  # exits 2 naming the file and line of a bad question
        where = f"{args.questions}: question {q['question_id']!r}"
        gt = ground_truth(q)
        if gt is None:
            p.error(f"{where}: no ground truth ({', '.join(GT_KEYS)})")
        gt = gt[0] if isinstance(gt, list) else gt
        image = os.path.abspath(os.path.join(args.image_folder, q["image"])) if q.get("image") else ""
        if image and not os.path.isfile(image):
            p.error(f"{where}: image {image}: no such file")
        docs.append({"question_id": str(q["question_id"]), "question": q["text"].replace("<image>", "").strip(),
                     "answer": str(gt), "image_path": image})
    os.makedirs(args.out, exist_ok=True)
    path = os.path.abspath(os.path.join(args.out, f"{args.name}.jsonl"))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    with open(os.path.join(args.out, f"{args.name}.yaml"), "w", encoding="utf-8") as f:
        f.write(TASK.format(name=args.name, docs=json.dumps(path), max_new_tokens=args.max_new_tokens))
    with open(os.path.join(args.out, "utils.py"), "w", encoding="utf-8") as f:
        f.write(UTILS)
    print(f"wrote task {args.name!r} ({len(docs)} questions) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
