"""Extra SFT rounds for a run whose training loss says it has not bound what it reads off the image.

SFT's training loss at its end separates the runs that learned the look-up of an object's side with
2-3 objects from those that did not: in the tenth session (3,400 steps, last 340) 0.0108-0.0122
against 0.0156-0.0275. With the contrast questions (eleventh session, 2,400 steps, last 240) it no
longer tells them apart well enough: 0.0200 (draw 1: position bound, Arabic shape 90.5%), 0.0242
(draw 0, bound), 0.0296 (draw 2, 92.7% on a side another object is opposite to). The bar sits under
all three, so the first round runs on every draw seen; 1,000 steps at a low learning rate in a new
data order took draw 1 to 95.0% and draw 2 to 97.0% (docs/demo.md), and both rounds ended at 0.0144,
under the bar: the next round runs only where one did not bind either.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from demo.dataset import read_jsonl

ROUND_DIR = "sft_more"  # RUN_DIR/sft_more1, sft_more2, ...
WINDOW = 240  # steps: the last tenth of configs/demo/sft.yaml's 2,400
BOUND_BELOW = 0.018  # under every 2,400-step SFT seen, over every extra round: see above
ROUND = ["train.num_steps=1000", "train.optimizer.learning_rate=3.0e-4", "train.optimizer.warmup_steps=20"]


def trailing_loss(metrics_path: str, window: int = WINDOW) -> Optional[float]:
    """Mean training loss of the last `window` steps in a stage's metrics.jsonl (None if it has none)."""
    losses = [row["loss"] for row in read_jsonl(metrics_path) if "loss" in row]
    return sum(losses[-window:]) / len(losses[-window:]) if losses else None


def extra_rounds(run: Callable[[list[str]], None], config: str, run_dir: str, checkpoint: str,
                 sft_overrides: list[str], seed: int, rounds: int, threshold: float = BOUND_BELOW,
                 quick: Optional[list[str]] = None) -> str:
    """Up to `rounds` more rounds of the SFT stage `config` (RUN_DIR/sft_more1, ...), each from the last
    final checkpoint, while the last stage's trailing loss is above `threshold`. -> the checkpoint to
    evaluate."""
    metrics = os.path.join(run_dir, "sft", "metrics.jsonl")
    for k in range(1, rounds + 1):
        loss = trailing_loss(metrics)
        if loss is None:
            print(f"\n{metrics} records no loss: no extra round", flush=True)
            break
        if loss <= threshold:
            print(f"\nSFT loss over its last {WINDOW} steps {loss:.4f}: bound, no extra round", flush=True)
            break
        out = os.path.join(run_dir, f"{ROUND_DIR}{k}")
        print(f"\nSFT loss over its last {WINDOW} steps {loss:.4f} > {threshold}: extra round {k} in {out}", flush=True)
        run(["train.main", "--config", config, *sft_overrides, f"run_dir={out}", f"train.init_from={checkpoint}",
             f"seed={seed + 5 * k}", f"data.seed={seed + 5 * k}", *ROUND, *(quick or [])])
        checkpoint, metrics = os.path.join(out, "final"), os.path.join(out, "metrics.jsonl")
    return checkpoint
