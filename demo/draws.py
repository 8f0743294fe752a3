"""The demo on several draws: each seed N is its own dataset, tokenizer and training run.

    python -m demo.draws [--seeds 0 1 2] [--layout grid|free] [--data demo_data] [--run-dir runs/demo]

Runs `python -m demo --seed N` for every seed (seed 0 in --data / --run-dir themselves, the folders
`make demo` uses, seed N in DATA_seedN / RUN_DIR_seedN; with --layout free, DATA_free... and
RUN_DIR_free...), then prints the 10 x 4 table of each draw with its accuracy by number of objects,
and the worst cell of each. Each draw reuses what an earlier run finished, so an interrupted run
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import demo.__main__ as demo
from demo import world


def draw_dirs(data: str, run_dir: str, seed: int, layout: str) -> tuple[str, str]:
    suffix = ("" if layout == "grid" else "_free") + (f"_seed{seed}" if seed else "")
    return data + suffix, run_dir + suffix


def worst_cell(summary: dict) -> tuple[str, str, float]:
    """(language, category, accuracy) of the lowest cell of a draw's table."""
    return min(((lang, cat, acc) for lang, s in summary.items() for cat, acc in s["per_category"].items()),
               key=lambda cell: cell[2])


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.draws", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="draws to run (default %(default)s)")
    p.add_argument("--layout", choices=world.LAYOUTS, default="grid", help="shape layout (default %(default)s)")
    p.add_argument("--data", default="demo_data", help="dataset folder of seed 0; others get a suffix (default %(default)s)")
    p.add_argument("--run-dir", default="runs/demo", help="run folder of seed 0; others get a suffix (default %(default)s)")
    args = p.parse_args(argv)
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds must be distinct non-negative integers")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    summaries, objects = {}, {}
    for seed in args.seeds:
        data, run_dir = draw_dirs(args.data, args.run_dir, seed, args.layout)
        print(f"\n=== draw seed {seed} ({args.layout}): {data}, {run_dir}", flush=True)
        demo.main(["--seed", str(seed), "--layout", args.layout, "--data", data, "--run-dir", run_dir])
        with open(os.path.join(run_dir, "eval_summary.json"), encoding="utf-8") as f:
            summaries[seed] = json.load(f)
        by_objects = os.path.join(run_dir, demo.BY_OBJECTS)
        if os.path.isfile(by_objects):
            with open(by_objects, encoding="utf-8") as f:
                objects[seed] = json.load(f)
    for seed, summary in summaries.items():
        print(f"\n=== seed {seed} ({args.layout})")
        demo.print_table(summary)
        if seed in objects:
            demo.print_by_objects(objects[seed])
    print()
    for seed, summary in summaries.items():
        lang, cat, acc = worst_cell(summary)
        print(f"seed {seed}: worst cell {lang} {cat} {100 * acc:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
