"""Held-out evaluation: loss and token accuracy over the first N eval batches (same every time)."""

from __future__ import annotations

import jax

from train import data as data_lib
from vlm_jax import losses, sharding


def evaluate(setup, params, num_batches: int, rows: tuple[int, int]) -> dict:
    cfg = setup.cfg
    gb = cfg.train.global_batch_size
    loader = data_lib.make_loader(cfg, "eval", gb, rows[0], rows[1], jax.process_index(), jax.process_count())
    total = losses.LossSums.zeros()
    for _ in range(num_batches):
        try:
            local = next(loader)
        except StopIteration:
            break
        total = total + setup.eval_step(params, sharding.global_batch(local, setup.mesh, gb))
    total = jax.device_get(total)
    count = max(float(total.count), 1.0)
    return {"eval_loss": float(total.nll) / count, "eval_token_accuracy": float(total.correct) / count,
            "eval_tokens": float(total.count)}
