"""One training stage, top to bottom: mesh -> data -> state (resume | init_from | init) -> steps."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from train import data as data_lib
from train import evaluate as eval_lib
from train import flops as flops_lib
from train import metrics as metrics_lib
from train import run_config
from train import state as state_lib
from vlm_jax import checkpoint as ckpt_lib
from vlm_jax import config_check, sharding
from vlm_jax.config import Config, ConfigError


class NonFiniteLoss(RuntimeError):
    pass


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


def _init_state(setup, cfg: Config, log) -> dict:
    state = setup.init_fn(cfg.seed)
    if cfg.train.init_from:
        params, _ = ckpt_lib.load_params(cfg.train.init_from, setup.abstract_state["params"])
        state, kept = state_lib.replace_params(state, params)
        log(f"initialised from {cfg.train.init_from}" + (f" ({len(kept)} new params kept from init)" if kept else ""))
    return state


class _Preemption:
    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def _lr(setup, step: int) -> dict:
    return {f"lr/{g}": float(s(step)) for g, s in setup.schedules.items()}


def run(cfg: Config, *, model=None, devices: Optional[list] = None) -> dict:
    """Train one stage; returns a summary dict. Raises NonFiniteLoss for nan_policy=stop."""
    devices = list(jax.devices() if devices is None else devices)
    config_check.check_devices(cfg, len(devices), jax.process_count())
    mesh = sharding.make_mesh(cfg.mesh, devices)
    gb = cfg.train.global_batch_size
    rows = sharding.process_rows(sharding.batch_sharding(mesh, 1), gb)
    pidx, pcount = jax.process_index(), jax.process_count()
    loader = data_lib.make_loader(cfg, "train", gb, rows[0], rows[1], pidx, pcount)
    steps = total_steps(cfg, loader, log=lambda m: print(m, file=sys.stderr) if pidx == 0 else None)
    setup = state_lib.build(cfg, mesh, steps, model=model)
    primary = pidx == 0
    cfg_dict = run_config.config_dict(cfg)
    if primary:
        run_config.write_resolved(cfg, cfg.run_dir)

    ckpt = ckpt_lib.TrainCheckpointer(os.path.join(cfg.run_dir, "checkpoints"), cfg.train.checkpoint.keep,
                                      cfg.train.checkpoint.async_save)
    restored = ckpt.restore_latest(setup.abstract_state)
    if restored is not None:
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
        state = _init_state(setup, cfg, log)
    log(f"params: {setup.num_params:,} total, {setup.num_trainable:,} trainable ({', '.join(cfg.train.trainable)}); "
        f"mesh {dict(mesh.shape)}; {steps} steps of {gb} rows")

    t0 = time.time()
    compiled = setup.train_step.lower(state, state_lib.abstract_batch(setup)).compile()
    peak = metrics_lib.peak_flops(devices[0].device_kind, cfg.train.logging.peak_flops_per_device)
    log(f"compiled the train step in {time.time() - t0:.1f}s")

    do_eval = cfg.train.eval.every_steps > 0 and data_lib.has_eval_data(cfg)
    preempt = _Preemption()
    step = start
    summary: dict[str, Any] = {"start_step": start}
    last = time.time()
    try:
        # The next batch is read while the device runs the current step (dispatch is asynchronous),
        # so `data_state` / `next_data_state` are the loader states before / after the running batch.
        next_data_state = loader.get_state()
        local = next(loader, None)
        while step < steps:
            data_state = next_data_state
            if local is None:
                log(f"training data exhausted after {step} steps")
                break
            batch = sharding.global_batch(local, mesh, gb)
            state, m = compiled(state, batch)
            skipped = int(loader.stats().get("skipped_examples", 0))  # through this batch, before the next read
            next_data_state = loader.get_state()
            local = next(loader, None) if step + 1 < steps else None
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
            rec = _record(setup, step, m, dt, skipped, peak, len(devices))
            if do_eval and step % cfg.train.eval.every_steps == 0 and step < steps:
                rec.update(eval_lib.evaluate(setup, state["params"], cfg.train.eval.num_batches, rows))
            if step % cfg.train.logging.every_steps == 0 or step == steps or "eval_loss" in rec:
                logger.log(rec)
            logger.progress(step, rec["loss"], rec["learning_rate"], rec["tokens_per_second"])
            if step % cfg.train.checkpoint.every_steps == 0 or preempt.requested:
                ckpt.save(state, next_data_state, cfg_dict)
            if preempt.requested:
                ckpt.wait()
                log(f"SIGTERM: saved checkpoint {step}, exiting")
                summary.update(preempted=True, step=step)
                return summary
            last = time.time()  # throughput counts data + step, not eval/checkpoint pauses
        ckpt.save(state, next_data_state, cfg_dict)
        if cfg.train.eval.at_end and data_lib.has_eval_data(cfg) and step > start:
            rec = {"step": step, **eval_lib.evaluate(setup, state["params"], cfg.train.eval.num_batches, rows)}
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


def _global_count(local: int) -> int:
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return int(np.asarray(multihost_utils.process_allgather(np.int64(local))).sum())


def _record(setup, step: int, m: dict, dt: float, skipped: int, peak, n_devices: int) -> dict:
    lrs = _lr(setup, step - 1)
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
    if setup.cfg.train.z_loss:
        rec["z_loss"] = float(m["z_loss"])
    if not bool(m["finite"]):
        rec["skipped_step"] = True
    cfg = setup.cfg
    seq = state_lib.abstract_batch(setup)["tokens"].shape[1]
    flops = flops_lib.step_flops(cfg.model, cfg.train.trainable, float(m["tokens"]), float(m["images"]), seq)
    rec["tflops_per_device_per_second"] = flops / n_devices / max(dt, 1e-9) / 1e12
    if peak:
        rec["mfu"] = flops / n_devices / max(dt, 1e-9) / peak
    return rec


__all__ = ["run", "NonFiniteLoss", "ConfigError", "total_steps"]
