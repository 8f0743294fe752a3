"""Extra SFT rounds after SFT: the first ALWAYS on every run, later ones while the training loss
says a shape is not bound to its side.

A round is 1,000 more steps at a low learning rate in a new data order. SFT's training loss over its
last 340 steps separated, in the tenth session, the runs that learned the look-up of an object's side
with 2-3 objects (0.0108-0.0122) from those that did not (0.0156-0.0275), but it misses a miss in one
language (the eleventh session's draw 2: 0.0118, Spanish position 94.5%), and on the twelfth
session's AVX-512 machine one round left draw 2 at French position 93.5% and draw 0 at English
position 95.0%. Three rounds on every draw took the worst cells of draws 0 / 1 / 2 there to 98.0 /
98.5 / 95.5% (docs/demo.md), each round adding about 86 s on that machine.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from demo.dataset import read_jsonl

ROUND_DIR = "sft_more"  # RUN_DIR/sft_more1, sft_more2, ...
WINDOW = 340  # steps: the last tenth of configs/demo/sft.yaml's 3,400
BOUND_BELOW = 0.013  # the gap between 0.0122 and 0.0156
ALWAYS = 3  # rounds run whatever the loss
ROUND = ["train.num_steps=1000", "train.optimizer.learning_rate=3.0e-4", "train.optimizer.warmup_steps=20"]


def trailing_loss(metrics_path: str, window: int = WINDOW) -> Optional[float]:
    """Mean training loss of the last `window` steps in a stage's metrics.jsonl (None if it has none)."""
    losses = [row["loss"] for row in read_jsonl(metrics_path) if "loss" in row]
    return sum(losses[-window:]) / len(losses[-window:]) if losses else None


def extra_rounds(run: Callable[[list[str]], None], config: str, run_dir: str, checkpoint: str,
                 sft_overrides: list[str], seed: int, rounds: int, threshold: float = BOUND_BELOW,
                 always: int = ALWAYS, quick: Optional[list[str]] = None) -> str:
    """Up to `rounds` more rounds of the SFT stage `config` (RUN_DIR/sft_more1, ...), each from the last
    final checkpoint: the first `always` whatever the loss, the others while the last stage's trailing
    loss is above `threshold`. -> the checkpoint to evaluate."""
    metrics = os.path.join(run_dir, "sft", "metrics.jsonl")
    for k in range(1, rounds + 1):
        loss = trailing_loss(metrics)
        if loss is None:
            print(f"\n{metrics} records no loss: no extra round", flush=True)
            break
        forced = k <= always
        if loss <= threshold and not forced:
            print(f"\nSFT loss over its last {WINDOW} steps {loss:.4f}: bound, no extra round", flush=True)
            break
        out = os.path.join(run_dir, f"{ROUND_DIR}{k}")
        why = f"rounds 1-{always} run on every draw" if forced else f"> {threshold}"
        print(f"\nSFT loss over its last {WINDOW} steps {loss:.4f} ({why}): extra round {k} in {out}", flush=True)
        run(["train.main", "--config", config, *sft_overrides, f"run_dir={out}", f"train.init_from={checkpoint}",
             f"seed={seed + 5 * k}", f"data.seed={seed + 5 * k}", *ROUND, *(quick or [])])
        checkpoint, metrics = os.path.join(out, "final"), os.path.join(out, "metrics.jsonl")
    return checkpoint
