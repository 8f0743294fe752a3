"""One training stage, read top to bottom: `train(cfg)` in sections (devices and mesh, input, model
and the update step, init or load, evals, the loop, the end); the jitted step is train/step.py.

The state is a dict {step, params, opt_state, rng}. A run directory holds
config.yaml, metrics.jsonl, checkpoints/<step>/ (state + data-iterator state + config), TensorBoard
events and, at the end, final/ (a model checkpoint folder).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from typing import Any, Optional

import jax
import numpy as np
from flax import traverse_util

from train import data as data_lib
from train import flops as flops_lib
from train import metrics as metrics_lib
from train.run_dir import check_run_dir, set_aside_run
from train.step import build_step
from vlm_jax import checkpoint as ckpt_lib
from vlm_jax import config_check, losses, optim, sharding
from vlm_jax.config import Config, ConfigError, dump_yaml, to_dict
from vlm_jax.data.errors import describe_skips



class NonFiniteLoss(RuntimeError):
    pass


def train(cfg: Config, *, model=None, devices: Optional[list] = None, start_over: bool = False) -> dict:
    """Train one stage; returns a summary dict. Raises NonFiniteLoss for nan_policy=stop, ConfigError when
    run_dir holds a run of another config (`start_over`: set that run aside and train from step 0)."""
    # ------------------------------------------------------------------ devices and mesh
    devices = list(jax.devices() if devices is None else devices)
    config_check.check_devices(cfg, len(devices), jax.process_count())
    mesh = sharding.make_mesh(cfg.mesh, devices)
    gb = cfg.train.global_batch_size
    rows = sharding.process_rows(sharding.batch_sharding(mesh, 1), gb)  # this process's rows of every batch
    pidx, pcount = jax.process_index(), jax.process_count()
    primary = pidx == 0

    # ------------------------------------------------------------------ the run directory
    if start_over:
        aside = set_aside_run(cfg.run_dir)
        if aside and primary:
            print(f"set the earlier run aside as {aside}", file=sys.stderr)
    check_run_dir(cfg)  # resume only what this config wrote: nothing is overwritten before this
    cfg_dict = to_dict(cfg)
    if primary:
        os.makedirs(cfg.run_dir, exist_ok=True)
        dump_yaml(cfg, os.path.join(cfg.run_dir, "config.yaml"))

    # ------------------------------------------------------------------ input
    loader = data_lib.make_loader(cfg, "train", gb, rows[0], rows[1], pidx, pcount)
    steps = total_steps(cfg, loader, log=lambda m: print(m, file=sys.stderr) if primary else None)

    # ------------------------------------------------------------------ model, optimizer and the update step
    ts = build_step(cfg, mesh, steps, model=model)

    # ------------------------------------------------------------------ init or load
    ckpt = ckpt_lib.TrainCheckpointer(os.path.join(cfg.run_dir, "checkpoints"), cfg.train.checkpoint.keep,
                                      cfg.train.checkpoint.async_save)
    restored = ckpt.restore_latest(ts.abstract_state)
    if restored is not None:  # resume: the state and the data order where the checkpoint left them
        state, data_state = restored
        loader.set_state(data_state)
        start = int(jax.device_get(state["step"]))
    else:
        state, start = None, 0
    logger = metrics_lib.MetricsLogger(cfg.run_dir, start, steps, cfg.train.logging, primary, cfg_dict)
    log = logger.message
    if restored is not None:
        log(f"resumed from {ckpt.directory}/{start}")
    else:
        state = ts.init(cfg.seed)
        if cfg.train.init_from:  # an earlier stage or a converted checkpoint; new leaves (LoRA) keep their init
            params, _ = ckpt_lib.load_params(cfg.train.init_from, ts.abstract_state["params"])
            state, kept = replace_params(state, params)
            log(f"initialised from {cfg.train.init_from}" + (f" ({len(kept)} new params kept from init)" if kept else ""))
    num_params, num_trainable = optim.param_counts(ts.abstract_state["params"], cfg.train.trainable)
    log(f"params: {num_params:,} total, {num_trainable:,} trainable ({', '.join(cfg.train.trainable)}); "
        f"mesh {dict(mesh.shape)}; {steps} steps of {gb} rows")

    t0 = time.time()
    compiled = ts.train_step.lower(state, ts.abstract_batch).compile()
    peak = metrics_lib.peak_flops(devices[0].device_kind, cfg.train.logging.peak_flops_per_device)
    log(f"compiled the train step in {time.time() - t0:.1f}s")

    # ------------------------------------------------------------------ evals
    has_eval_data = cfg.train.fake_data.enabled or bool(cfg.data.eval_sources)

    def evaluate(params) -> dict:
        """Loss and token accuracy over the first num_batches held-out batches (the same every time)."""
        eval_loader = data_lib.make_loader(cfg, "eval", gb, rows[0], rows[1], pidx, pcount)
        total = losses.LossSums.zeros()
        for _ in range(cfg.train.eval.num_batches):
            local = next(eval_loader, None)
            if local is None:
                break
            total = total + ts.eval_step(params, sharding.global_batch(local, mesh, gb))
        total = jax.device_get(total)
        count = max(float(total.count), 1.0)
        return {"eval_loss": float(total.nll) / count, "eval_token_accuracy": float(total.correct) / count,
                "eval_tokens": float(total.count)}

    # ------------------------------------------------------------------ the loop
    do_eval = cfg.train.eval.every_steps > 0 and has_eval_data
    preempt = _Preemption()
    step = start
    summary: dict[str, Any] = {"start_step": start}
    last = time.time()

    def stop_for_sigterm() -> dict:
        """Save the state after `step` with the data position before the batch not yet trained on."""
        ckpt.save(state, next_data_state, cfg_dict)
        ckpt.wait()
        log(f"SIGTERM: saved checkpoint {step}, exiting")
        summary.update(preempted=True, step=step)
        return summary

    try:
        # The next batch is read while the device runs the current step (dispatch is asynchronous),
        # so `data_state` / `next_data_state` are the loader states before / after the running batch.
        next_data_state = loader.get_state()
        local = preempt.read(loader)
        while step < steps:
            data_state = next_data_state
            if local is None:
                if preempt.requested:  # SIGTERM during the first read
                    return stop_for_sigterm()
                stats = loader.stats()
                log(f"training data exhausted after {step} steps; {stats.get('skipped_examples', 0)} examples skipped "
                    f"({describe_skips(stats.get('skipped_by_reason', {}))})")
                break
            batch = sharding.global_batch(local, mesh, gb)
            state, m = compiled(state, batch)
            skipped = int(loader.stats().get("skipped_examples", 0))  # through this batch, before the next read
            next_data_state = loader.get_state()
            local = preempt.read(loader) if step + 1 < steps and not preempt.requested else None
            m = jax.device_get(m)
            now = time.time()
            dt, last = now - last, now
            if not bool(m["finite"]):
                if cfg.train.nan_policy == "stop":
                    ckpt.save(state, data_state, cfg_dict)
                    ckpt.wait()
                    raise NonFiniteLoss(
                        f"non-finite loss or gradient at step {step + 1}; stopped with the last good state saved "
                        f"as checkpoint {ckpt.directory}/{int(jax.device_get(state['step']))} "
                        "(lower the learning rate or set train.nan_policy=skip)"
                    )
                log(f"step {step + 1}: non-finite loss or gradient, update skipped")
            step += 1
            rec = _record(cfg, ts.schedules, step, m, dt, skipped, peak, len(devices), ts.abstract_batch)
            if do_eval and step % cfg.train.eval.every_steps == 0 and step < steps:
                rec.update(evaluate(state["params"]))
            if step % cfg.train.logging.every_steps == 0 or step == steps or "eval_loss" in rec:
                logger.log(rec)
            logger.progress(step, rec["loss"], rec["learning_rate"], rec["tokens_per_second"])
            if preempt.requested:  # during the step or the read of the next batch
                return stop_for_sigterm()
            if step % cfg.train.checkpoint.every_steps == 0:
                ckpt.save(state, next_data_state, cfg_dict)
            last = time.time()  # throughput counts data + step, not eval/checkpoint pauses

        # -------------------------------------------------------------- the end: checkpoint, eval, final/
        ckpt.save(state, next_data_state, cfg_dict)
        if cfg.train.eval.at_end and has_eval_data and step > start:
            rec = {"step": step, **evaluate(state["params"])}
            logger.log(rec)
            summary.update(rec)
        ckpt.wait()
        final = os.path.join(cfg.run_dir, "final")
        if cfg.train.checkpoint.export_final and not ckpt_lib.is_model_checkpoint(final):
            tok = cfg.data.tokenizer if cfg.data.tokenizer and os.path.isdir(cfg.data.tokenizer) else None
            ckpt_lib.save_model_checkpoint(final, state["params"], cfg.model, tokenizer_dir=tok,
                                           metadata={"step": step, "run_dir": os.path.abspath(cfg.run_dir)})
        summary.update(step=step, preempted=False)
        return summary
    finally:
        preempt.restore()
        ckpt.close()
        logger.close()


def total_steps(cfg: Config, loader, log=print) -> int:
    """train.num_steps, or num_epochs over the data: records / (global batch * examples per row),
    with examples per packed row measured on a few batches (the loader is rewound after)."""
    if cfg.train.num_steps > 0:
        return cfg.train.num_steps
    from jax.experimental import multihost_utils

    from vlm_jax.data import pipeline

    n = len(pipeline.record_dataset(cfg.data.sources, shuffle=False, seed=0, num_epochs=1,
                                    process_index=0, process_count=1))
    state = loader.get_state()
    per_row = []
    for _ in range(4):
        try:
            seg = next(loader)["segment_ids"]
        except StopIteration:
            break
        per_row += [int(r.max()) for r in seg if r.max() > 0]
    loader.set_state(state)
    ratio = float(np.mean(per_row)) if per_row else 1.0
    ratio = float(multihost_utils.broadcast_one_to_all(np.float32(ratio)))  # every host the same plan
    steps = max(1, math.ceil(n * cfg.train.num_epochs / (cfg.train.global_batch_size * ratio)))
    log(f"{n} records x {cfg.train.num_epochs:g} epochs at ~{ratio:.2f} examples per row -> {steps} steps")
    return steps


class _Preempted(BaseException):  # not an Exception: no `except Exception` in the loader counts it as a bad record
    pass


class _Preemption:
    """SIGTERM sets `requested`; the loop saves a checkpoint after the running step and exits 0. One that
    comes while the loop waits for data (a slow or skipping loader) ends the wait: `read` returns None."""

    def __init__(self):
        self.requested = False
        self._reading = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        if self._reading:
            raise _Preempted

    def read(self, loader) -> Optional[dict]:
        """The next batch, or None at the end of the data or on SIGTERM."""
        if self.requested:
            return None
        self._reading = True
        try:
            return next(loader, None)
        except _Preempted:
            return None
        finally:
            self._reading = False

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def _global_count(local: int) -> int:
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return int(np.asarray(multihost_utils.process_allgather(np.int64(local))).sum())


def _record(cfg: Config, schedules: dict, step: int, m: dict, dt: float, skipped: int, peak, n_devices: int,
            abstract_batch: dict) -> dict:
    """One metrics.jsonl line: the step's metrics, the learning rate(s), throughput, FLOPs and MFU."""
    lrs = {f"lr/{g}": float(s(step - 1)) for g, s in schedules.items()}
    base = lrs.get("lr/decoder", lrs.get("lr/lora", next(iter(lrs.values()))))
    rec = {
        "step": step,
        "loss": float(m["loss"]),
        "learning_rate": base,
        "tokens_per_second": float(m["tokens"]) / max(dt, 1e-9),
        "supervised_tokens_per_second": float(m["supervised_tokens"]) / max(dt, 1e-9),
        "skipped_examples": _global_count(skipped),
        "grad_norm": float(m["grad_norm"]),
        "token_accuracy": float(m["token_accuracy"]),
        "step_time": dt,
        **(lrs if len(lrs) > 1 else {}),
    }
    if cfg.train.z_loss:
        rec["z_loss"] = float(m["z_loss"])
    if not bool(m["finite"]):
        rec["skipped_step"] = True
    seq = abstract_batch["tokens"].shape[1]
    flops = flops_lib.step_flops(cfg.model, cfg.train.trainable, float(m["tokens"]), float(m["images"]), seq)
    rec["tflops_per_device_per_second"] = flops / n_devices / max(dt, 1e-9) / 1e12
    if peak:
        rec["mfu"] = flops / n_devices / max(dt, 1e-9) / peak
    return rec


def replace_params(state: dict, params: Any) -> tuple[dict, list[str]]:
    """Overwrite state params with `params` leaves present in both trees (same shape); returns
    the paths kept from initialisation (e.g. new LoRA adapters)."""
    cur = traverse_util.flatten_dict(state["params"], sep="/")
    new = traverse_util.flatten_dict(params, sep="/")
    kept = []
    out = {}
    for k, v in cur.items():
        if k in new:
            if tuple(new[k].shape) != tuple(v.shape):
                raise ConfigError(f"train.init_from: {k} has shape {tuple(new[k].shape)}, the model expects "
                                  f"{tuple(v.shape)} (a checkpoint of another model config)")
            out[k] = jax.device_put(new[k], v.sharding).astype(v.dtype)
        else:
            kept.append(k)
            out[k] = v
    extra = sorted(set(new) - set(cur))
    if extra:
        raise ConfigError(f"train.init_from: the checkpoint has {len(extra)} params the model lacks, e.g. {extra[0]}")
    return {**state, "params": traverse_util.unflatten_dict(out, sep="/")}, kept
