"""Run logging: metrics.jsonl, TensorBoard, optional W&B, the progress bar, and MFU."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from typing import Any, Optional

# bf16 dense peak FLOP/s per device (chip), by jax `device_kind` prefix
PEAK_FLOPS = {
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v4": 275e12,
    "TPU v3": 123e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA GH200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L40S": 362e12,
    "NVIDIA A10G": 125e12,
}


def peak_flops(device_kind: str, override: float = 0.0) -> Optional[float]:
    if override > 0:
        return override
    for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
        if device_kind.startswith(prefix):
            return PEAK_FLOPS[prefix]
    return None


def truncate_jsonl(path: str, last_step: int) -> None:
    """Keep only complete records with step <= last_step (a resumed run rewrites the rest)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("step", 0) <= last_step:
                kept.append(json.dumps(rec))
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class WandbMirror:
    """The W&B run of a run directory (one run id per directory), holding every logged step once.

    metrics.jsonl is the record; W&B mirrors it. A resumed run continues the same W&B run
    (resume="allow") after the last step W&B really holds - the server's count online, the flushed
    part of the offline transaction logs offline (a crash loses the last seconds W&B had not
    written): steps between the checkpoint and that point are not sent again (W&B ignores a step
    lower than its last; resume is bit-exact, so they hold the same values), and steps it misses
    up to the checkpoint are sent from metrics.jsonl first."""

    def __init__(self, run_dir: str, start_step: int, project: str, config: dict, jsonl_path: str):
        import wandb  # optional dependency

        from train import wandb_offline  # noqa: PLC0415

        run_id = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:16]
        held = wandb_offline.last_step(os.path.join(run_dir, "wandb"), run_id)  # before this segment's files
        self.run = wandb.init(project=project, id=run_id, resume="allow", config=config, dir=run_dir)
        if not self.run.offline and self.run.resumed:
            held = int(self.run.starting_step) - 1
        self.first_new = held + 1  # steps below this are in W&B already
        if os.path.exists(jsonl_path):  # what W&B misses up to the checkpoint (metrics.jsonl was cut there)
            with open(jsonl_path, encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
                    if held < rec.get("step", 0) <= start_step:
                        self.run.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])

    def log(self, rec: dict) -> None:
        if rec["step"] >= self.first_new:
            self.run.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])

    def finish(self) -> None:
        self.run.finish()


class MetricsLogger:
    """Writes on process 0 only; other processes get a no-op logger."""

    def __init__(self, run_dir: str, start_step: int, total_steps: int, cfg_logging, active: bool, config_dict: dict):
        self.active = active
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = self.wandb = self.bar = None
        if not active:
            return
        os.makedirs(run_dir, exist_ok=True)
        truncate_jsonl(self.path, start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        if cfg_logging.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=start_step)
        if cfg_logging.wandb:
            self.wandb = WandbMirror(run_dir, start_step, cfg_logging.wandb_project, config_dict, self.path)
        if cfg_logging.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def log(self, record: dict) -> None:
        if not self.active:
            return
        rec = {k: _clean(v) for k, v in record.items()}
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        step = rec["step"]
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                if self.tb is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(rec)

    def progress(self, step: int, loss: float, lr: float, tokens_per_second: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
            self.bar.refresh()

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.file.close()
