"""The embedded default (`make demo`): a small multilingual VLM trained from scratch on CPU.

    python -m demo [--data demo_data] [--run-dir runs/demo] [--seed 0] [--layout grid] [--image-size 96]
                   [--patch-size 32] [--no-align-positions]
                   [--position-weight 2] [--sft-turns several] [--align-scenes single] [--tower-steps 4000]
                   [--position-target objects] [--objects-weights 1,2,3] [--sft-rounds 2] [--quick]

Generates the shape-world dataset and tokenizer (once; --seed and --layout are passed to
demo.make_data, and --seed is the training seed too), pretrains the vision tower on the generator's
labels (demo.tower, stage 0: LLaVA's CLIP is pretrained too), trains the two stages of
configs/demo/recipe.yaml from it (align with `plain`, then SFT with `vicuna_v1`; each stage resumes
or is skipped when done), adds --sft-rounds SFT rounds (warm restarts of SFT's schedule that bind a shape to its side on
every draw measured: demo.more_sft), evaluates the held-out questions in all 10 languages with infer.evaluate, prints
the per-language table and the accuracy per category and number of objects, samples two answers and
writes RUN_DIR/eval_summary.json, RUN_DIR/eval_by_objects.json and RUN_DIR/loss_curve.png. Every
step reuses what an earlier run finished.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from typing import Optional

from demo import dataset, language_scripts, languages, make_data, more_sft, world
from demo.dataset import read_jsonl
from demo.tower import POSITION_TARGETS

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo", "recipe.yaml")
SFT_CONFIG = os.path.join(os.path.dirname(RECIPE), "sft.yaml")
QUICK = {  # a few steps through the same code path (the test suite's reduced demo)
    "data": ["--num-train", "64", "--num-eval", "4", "--vocab-size", "600"],
    "tower": ["--steps", "3", "model.decoder.vocab_size=600"],
    "train": ["train.num_steps=3", "train.checkpoint.every_steps=2", "model.decoder.vocab_size=600",
              "data.seq_len=256"],
}
SAMPLES = (("english", 0), ("chinese", 1))  # (language folder, question index)
BY_OBJECTS = "eval_by_objects.json"  # RUN_DIR's accuracy per category and number of objects
# the ViT patch per layout: on the grid a patch is one 32 px cell, one object; a free shape straddles
# patches, so 16 px ones: the tower then reads a free shape at 99.0% on 96 px images (36 tokens an
# image) and 91.3% on 64 px ones, a ceiling the VLM cannot pass (docs/demo_levers.md)
PATCH_SIZE = {"grid": 32, "free": 16}
# SFT rows: sft.yaml's 128 tokens hold ~3.7 grid examples (9 image tokens each); a free image is 36
# tokens at 16 px patches, so its rows are twice as long to carry as many answers
SFT_SEQ_LEN = {"free": 256}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo_data", help="dataset + tokenizer folder (default %(default)s)")
    p.add_argument("--run-dir", default="runs/demo", help="where the stages, answers and summary go (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the dataset, the tokenizer and the training run (init and data order) (default %(default)s)")
    p.add_argument("--layout", choices=world.LAYOUTS, default="grid",
                   help="grid: each shape in a cell of a 3x3 grid; free: anywhere, any size (default %(default)s)")
    p.add_argument("--image-size", type=int, default=world.Params().image_size,
                   help="image side in pixels, 64-96 (default %(default)s)")
    p.add_argument("--patch-size", type=int, help="the tower's patch side in pixels (default: 32 on the grid, 16 free)")
    p.add_argument("--align-positions", action=argparse.BooleanOptionalAction, default=True,
                   help="stage-1 captions also name the sides their object is on (default on; docs/demo_levers.md)")
    # 2, not the generator's 1: with SFT's 2,600 steps it lifted position on draws 0 and 1 from
    # 57.5-73.5% to 75.5-94.5% (docs/demo_levers.md); 3 with the 4,000-step tower binds draw 2 and
    # loses draw 0 (tenth session, docs/demo.md)
    p.add_argument("--position-weight", type=int, default=2,
                   help="weight of a position question among an object's sft questions, colour and shape 2 (default %(default)s)")
    make_data.add_mix_arguments(p)
    # twice and three times as many 2- and 3-object training images as 1-object ones: binding a shape to
    # its colour and side is learned on those (seed 0: worst cell 85% -> 95.5%; docs/demo.md)
    p.set_defaults(objects_weights="1,2,3")
    # 4,000, not 1,500: the worst cells of draws 0 / 1 / 2 go from 95.5 / 94.5 / 81% to
    # 99.5 / 98.5 / 94.5% (a shape bound to its side); 5,000 left draw 2 at 93% (docs/demo.md)
    p.add_argument("--tower-steps", type=int, default=4000,
                   help="stage-0 steps of demo.tower; 0 keeps the tower at its random init (default %(default)s)")
    # objects, not demo.tower's every-patch: an object's side is then read off its own patch, not
    # off the empty cells around it, which fails with 2-3 objects (docs/demo_levers.md)
    p.add_argument("--position-target", choices=POSITION_TARGETS, default="objects",
                   help="patches whose row and column demo.tower trains (default %(default)s)")
    p.add_argument("--sft-rounds", type=int, default=more_sft.ROUNDS,
                   help="extra SFT rounds of 1,000 steps, each a warm restart of SFT's schedule in a new data order "
                        "(demo.more_sft); 0: none (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a few steps on a tiny dataset (same code path; for tests)")
    p.add_argument("--eval-batch-size", type=int, default=40)
    args = p.parse_args(argv)
    if args.tower_steps < 0 or args.sft_rounds < 0:
        p.error("--tower-steps and --sft-rounds must be >= 0")
    if args.patch_size is None:
        args.patch_size = PATCH_SIZE[args.layout]
    if args.patch_size < 1 or args.image_size % args.patch_size:
        p.error(f"--patch-size must divide --image-size ({args.image_size}), got {args.patch_size}")
    return args


def geometry_overrides(args) -> list[str]:
    """The tower's image and patch size, the same in stage 0 and both stages."""
    return [f"model.vision.image_size={args.image_size}", f"model.vision.patch_size={args.patch_size}"]


# XLA:CPU's YNNPACK dot fusions are slower at this model's sizes: the SFT step 142 -> 122 ms on a
# 2-core AMD EPYC (align's 325 -> 337 ms; docs/demo.md). A flag the user set wins.
CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def child_env() -> dict:
    env = dict(os.environ)
    if "ynn_fusion_type" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {CPU_FLAGS}".strip()
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found": the demo needs none
    return env


def run(cmd: list[str]) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    code = subprocess.run([sys.executable, "-m", *cmd], env=child_env()).returncode
    if code:  # the step printed its own error: pass its exit code on (2: bad usage or a refused folder)
        raise SystemExit(code)
    print(f"({cmd[0]}: {time.time() - t0:.0f}s)", flush=True)


def stage_overrides(args) -> list[str]:
    d = args.data
    both = [f"seed={args.seed}", f"data.seed={args.seed}", *geometry_overrides(args)]
    return [f"data.tokenizer={d}/tokenizer",
            f"data.sources=[{{path: {d}/align.json, image_folder: {d}/images}}]", *both], \
        [f"data.tokenizer={d}/tokenizer",
         f"data.sources=[{{path: {d}/sft.json, image_folder: {d}/images}}]", *both,
         *([f"data.seq_len={SFT_SEQ_LEN[args.layout]}"] if args.layout in SFT_SEQ_LEN else [])]


def pretrain_tower(args) -> Optional[str]:
    """Stage 0 (demo.tower): the checkpoint stage 1 starts from, or None with --tower-steps 0."""
    if not args.tower_steps:
        return None
    out = os.path.join(args.run_dir, "tower")
    run(["demo.tower", "--data", args.data, "--out", out, "--seed", str(args.seed),
         "--position-target", args.position_target,
         *(QUICK["tower"] if args.quick else ["--steps", str(args.tower_steps)]), *geometry_overrides(args)])
    return out


def train(args, tower: Optional[str]) -> str:
    align, sft = stage_overrides(args)
    if tower:
        align.append(f"train.init_from={tower}")
    extra = QUICK["train"] if args.quick else []
    # One recipe: both stages share run_dir; per-stage data paths go in as recipe stage overrides.
    recipe = os.path.join(args.run_dir, "recipe.yaml")
    os.makedirs(args.run_dir, exist_ok=True)
    here = os.path.dirname(RECIPE)
    with open(recipe, "w", encoding="utf-8") as f:
        json.dump({"run_dir": args.run_dir, "stages": [
            {"name": "align", "config": os.path.join(here, "align.yaml"), "overrides": align + extra},
            {"name": "sft", "config": SFT_CONFIG, "overrides": sft + extra},
        ]}, f, indent=1)
    run(["train.main", "--config", recipe])
    return os.path.join(args.run_dir, "sft", "final")


@functools.lru_cache(maxsize=1)
def chat_options() -> tuple[str, ...]:
    """infer's --template and --system as configs/demo/sft.yaml trains them."""
    from vlm_jax.config import Config, load

    data = load(Config, SFT_CONFIG).data
    return ("--template", data.template, *(() if data.system is None else ("--system", data.system)))


def evaluate(args, checkpoint: str) -> str:
    answers = os.path.join(args.run_dir, "eval")
    run(["infer.evaluate", "--checkpoint", checkpoint, "--questions", os.path.join(args.data, "eval"),
         "--image-folder", os.path.join(args.data, "eval", "images"), "--answers", answers,
         *chat_options(), "--max-new-tokens", "16", "--batch-size", str(args.eval_batch_size),
         "--scorer", "none"])
    return answers


def summarize(args, answers_dir: str) -> dict:
    """Exact match per language and category with the dataset's own normalisation, and the share of
    answers written in the question's language (its script)."""
    langs = {lang.name: lang for lang in languages.LANGUAGES.values()}
    summary = {}
    for folder in sorted(os.listdir(os.path.join(args.data, "eval"))):
        refs_path = os.path.join(args.data, "eval", folder, "answers.jsonl")
        if folder not in langs or not os.path.isfile(refs_path):
            continue
        preds = {r["question_id"]: r["text"] for r in read_jsonl(os.path.join(answers_dir, f"{folder}.jsonl"))}
        scores = world.score_answers(preds, read_jsonl(refs_path))
        in_lang = [language_scripts.in_language_script(t, langs[folder].code) for t in preds.values()]
        scores["answer_in_language"] = sum(in_lang) / max(1, len(in_lang))
        summary[folder] = scores
    return summary


def by_objects(args, answers_dir: str) -> dict:
    """Exact match per category and number of objects in the image, over all languages:
    {category: {"1": acc, "2": acc, "3": acc}} (the look-ups that bind a shape to its colour or side
    are only needed with 2-3 objects, so a miss there is a binding miss)."""
    params = world.Params(**dataset.read_manifest(args.data)["params"])
    objects: dict = {}
    hits: dict = {}
    for folder in sorted(os.listdir(os.path.join(args.data, "eval"))):
        refs_path = os.path.join(args.data, "eval", folder, "answers.jsonl")
        answers = os.path.join(answers_dir, f"{folder}.jsonl")
        if not (os.path.isfile(refs_path) and os.path.isfile(answers)):
            continue
        preds = {r["question_id"]: r["text"] for r in read_jsonl(answers)}
        for ref in read_jsonl(refs_path):
            qid = ref["question_id"]
            if qid not in objects:
                objects[qid] = len(world.eval_scene(params, qid)[0].objs)
            ok = world.score_answers({qid: preds[qid]} if qid in preds else {}, [ref])["accuracy"]
            hits.setdefault(ref["category"], {}).setdefault(str(objects[qid]), []).append(ok)
    order = [c for c in world.CATEGORIES if c in hits] + sorted(set(hits) - set(world.CATEGORIES))
    return {cat: {n: sum(v) / len(v) for n, v in sorted(hits[cat].items())} for cat in order}


def print_by_objects(table: dict) -> None:
    counts = sorted({n for per_n in table.values() for n in per_n})
    print("\nby objects in the image (all languages): " + " / ".join(counts))
    for cat, per_n in table.items():
        print(f"{cat:<10}" + " / ".join(f"{100 * per_n[n]:.1f}" if n in per_n else "-" for n in counts))


def print_table(summary: dict) -> None:
    cats = list(world.CATEGORIES)
    head = f"{'language':<10}" + "".join(f"{c:>10}" for c in cats) + f"{'all':>8}{'in-lang':>9}"
    print("\n" + head + "\n" + "-" * len(head))
    for lang, s in summary.items():
        row = "".join(f"{100 * s['per_category'].get(c, 0):>9.1f}%" for c in cats)
        print(f"{lang:<10}{row}{100 * s['accuracy']:>7.1f}%{100 * s['answer_in_language']:>8.1f}%")


def sample_answers(args, checkpoint: str) -> None:
    """Two held-out questions, in English and in Chinese, answered by the trained model (one
    infer.sample batch: one model load and compile)."""
    os.makedirs(args.run_dir, exist_ok=True)
    prompts = os.path.join(args.run_dir, "samples.jsonl")
    with open(prompts, "w", encoding="utf-8") as f:
        for lang, index in SAMPLES:
            q = read_jsonl(os.path.join(args.data, "eval", lang, "question.jsonl"))[index]
            f.write(json.dumps({"prompt": q["text"], "image": q["image"]}, ensure_ascii=False) + "\n")
    print("\nsamples of the held-out questions (" + ", ".join(lang for lang, _ in SAMPLES) + ")")
    run(["infer.sample", "--checkpoint", checkpoint, "--prompts", prompts,
         "--image-folder", os.path.join(args.data, "eval", "images"), *chat_options(), "--max-new-tokens", "16"])


def loss_curve(run_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    more = sorted((d for d in os.listdir(run_dir) if d.startswith(more_sft.ROUND_DIR)),
                  key=lambda d: int(d[len(more_sft.ROUND_DIR):]))
    for stage in ("align", "sft", *more):
        path = os.path.join(run_dir, stage, "metrics.jsonl")
        if not os.path.isfile(path):
            continue
        rows = [r for r in read_jsonl(path) if "loss" in r]
        ax.plot([offset + r["step"] for r in rows], [r["loss"] for r in rows], label=stage)
        offset += max((r["step"] for r in rows), default=0)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(run_dir, "loss_curve.png")
    fig.savefig(out, dpi=110)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    levers = (["--align-positions"] if args.align_positions else []) + [
        "--position-weight", str(args.position_weight), *make_data.mix_argv(args)]
    run(["demo.make_data", "--out", args.data, "--seed", str(args.seed), "--layout", args.layout,
         "--image-size", str(args.image_size), *levers,
         *(QUICK["data"] if args.quick else [])])
    checkpoint = train(args, pretrain_tower(args))
    checkpoint = more_sft.extra_rounds(run, SFT_CONFIG, args.run_dir, checkpoint, stage_overrides(args)[1],
                                       args.seed, args.sft_rounds, quick=QUICK["train"] if args.quick else None)
    answers = evaluate(args, checkpoint)
    summary = summarize(args, answers)
    print_table(summary)
    with open(os.path.join(args.run_dir, "eval_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    objects = by_objects(args, answers)
    print_by_objects(objects)
    with open(os.path.join(args.run_dir, BY_OBJECTS), "w", encoding="utf-8") as f:
        json.dump(objects, f, indent=1)
    sample_answers(args, checkpoint)
    png = loss_curve(args.run_dir)
    print(f"\nwrote {os.path.join(args.run_dir, 'eval_summary.json')} and {png} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
