"""The offline W&B segments of a run directory, read with train.wandb_offline."""

from __future__ import annotations

import glob
import os

from train import wandb_offline


def segments(run_dir: str) -> list[list[dict]]:
    """History rows of every offline segment in run_dir/wandb (one run id per run directory)."""
    ids = {os.path.basename(p).split("-")[3] for p in glob.glob(os.path.join(run_dir, "wandb", "offline-run-*"))}
    assert len(ids) <= 1, ids
    return wandb_offline.segments(os.path.join(run_dir, "wandb"), ids.pop()) if ids else []


def wait_until_written(run_dir: str, finished: int, timeout: float = 60.0) -> None:
    """Wait until `finished` offline segments hold their exit record (run.finish() returns before
    W&B's service has written everything)."""
    import time

    from train.wandb_offline import records

    deadline = time.time() + timeout
    while time.time() < deadline:
        done = 0
        for path in glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "*.wandb")):
            done += any(r.WhichOneof("record_type") == "exit" for r in records(path))
        if done >= finished:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{run_dir}: W&B wrote {done} of {finished} finished segments")
