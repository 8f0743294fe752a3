"""W&B logging in offline mode (WANDB_MODE=offline), resume included: across a crash and a resume
every step reaches W&B exactly once, with metrics.jsonl's values (no step duplicated or dropped)."""

import json
import os
import types

import pytest

from tests.helpers.wandb_offline import segments, wait_until_written
from train.metrics import MetricsLogger

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")


def _logging(wandb=True):
    return types.SimpleNamespace(tensorboard=False, wandb=wandb, wandb_project="vlm-jax-test", progress_bar=False)


def _segment(run_dir, start, end, value, wandb=True, eval_at=()):
    """A training segment resumed at `start` that logs steps start+1..end (and eval rows)."""
    log = MetricsLogger(str(run_dir), start, end, _logging(wandb), True, {"lr": 1e-3})
    for step in range(start + 1, end + 1):
        log.log({"step": step, "loss": value(step), "learning_rate": 1e-3, "tokens_per_second": 10.0})
        if step in eval_at:
            log.log({"step": step, "eval_loss": value(step) / 2})
    log.close()


def _jsonl(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _history(run_dir):
    """step -> the row W&B ends with once the segments are synced in order (a step lower than
    the run's last one is ignored by W&B), and how often each step was sent."""
    rows, sent, last = {}, {}, 0
    for seg in segments(str(run_dir)):
        for row in seg:
            step = row["_step"]
            sent[step] = sent.get(step, 0) + 1
            if step >= last:
                rows.setdefault(step, {}).update(row)
                last = step
    return rows, sent


def test_resume_after_a_crash_sends_every_step_once(tmp_path):
    loss = lambda s: 1.0 / s  # noqa: E731 (resume is bit-exact: a re-run step has the same loss)
    _segment(tmp_path, 0, 9, loss, eval_at=(5,))  # ran to step 9, the last checkpoint was step 5
    wait_until_written(str(tmp_path), 1)
    _segment(tmp_path, 5, 12, loss, eval_at=(10,))
    wait_until_written(str(tmp_path), 2)
    rows, sent = _history(tmp_path)
    assert sorted(rows) == list(range(1, 13)) and set(sent.values()) == {1}
    assert len(segments(str(tmp_path))) == 2 and [r["_step"] for r in segments(str(tmp_path))[1]] == [10, 11, 12]
    by_step = {}
    for rec in _jsonl(tmp_path):
        by_step.setdefault(rec["step"], {}).update(rec)
    assert sorted(by_step) == list(range(1, 13))  # metrics.jsonl: cut at 5, rewritten from 6
    for step, rec in by_step.items():
        assert rows[step]["loss"] == rec["loss"]
        assert rows[step].get("eval_loss") == rec.get("eval_loss")
    assert rows[5]["eval_loss"] == 0.1 and rows[10]["eval_loss"] == 0.05


def test_wandb_switched_on_at_resume_gets_the_earlier_steps_from_metrics_jsonl(tmp_path):
    loss = lambda s: 2.0 / s  # noqa: E731
    _segment(tmp_path, 0, 7, loss, wandb=False)  # crashed after 7, checkpoint at 4, W&B off
    _segment(tmp_path, 4, 9, loss)
    wait_until_written(str(tmp_path), 1)
    rows, sent = _history(tmp_path)
    assert sorted(rows) == list(range(1, 10)) and set(sent.values()) == {1}
    assert all(rows[s]["loss"] == loss(s) for s in rows)


@pytest.mark.slow
def test_train_main_kill_9_and_resume_with_wandb_offline(tmp_path):
    """The real trainer: killed mid-run, rerun; W&B holds each step once with metrics.jsonl's losses."""
    import signal
    import subprocess
    import sys
    import time

    from tests.train.test_train_cli import ROOT, env, write_config

    path, run = write_config(tmp_path), str(tmp_path / "run")
    flags = ["--config", path, f"run_dir={run}", "train.logging.wandb=true", "train.logging.wandb_project=t",
             "train.checkpoint.every_steps=3"]
    wandb_env = env(1, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true")
    wandb_env.pop("WANDB_SERVICE", None)  # this process's W&B service (earlier tests): each trainer starts its own
    proc = subprocess.Popen([sys.executable, "-m", "train.main", *flags], cwd=ROOT, env=wandb_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = os.path.join(run, "metrics.jsonl"), time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 5:  # past the step-3 checkpoint
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run([sys.executable, "-m", "train.main", *flags], cwd=ROOT, env=wandb_env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wait_until_written(run, 1)
    rows, sent = _history(tmp_path / "run")
    want = {rec["step"]: rec["loss"] for rec in _jsonl(run) if "loss" in rec}
    assert sorted(want) == list(range(1, 9)) and sorted(s for s in rows if "loss" in rows[s]) == list(range(1, 9))
    assert all(n == 1 for s, n in sent.items()), sent
    assert {s: rows[s]["loss"] for s in want} == want
