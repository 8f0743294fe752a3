"""Everything the loop needs before the first step: abstract state, shardings, jitted steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from train import data as data_lib
from train import step as step_lib
from vlm_jax import optim, sharding
from vlm_jax.config import Config


def build_model(cfg: Config):
    from vlm_jax.models.vlm import VLM

    return VLM(cfg.model)


@dataclass
class Setup:
    cfg: Config
    model: Any
    mesh: Any
    tx: Any
    schedules: dict
    total_steps: int
    abstract_state: dict  # ShapeDtypeStructs carrying shardings
    state_shardings: dict
    batch_shardings: dict
    trainable_keys: frozenset
    num_params: int
    num_trainable: int
    train_step: Callable
    eval_step: Callable
    init_fn: Callable  # rng -> sharded state


def _boxed_init(model, rng):
    """Params still wrapped in their nn.Partitioned logical-axis boxes."""
    return model.init_boxed(rng) if hasattr(model, "init_boxed") else model.init_params(rng)


def build(cfg: Config, mesh, total_steps: int, model=None) -> Setup:
    model = model if model is not None else build_model(cfg)
    rules = sharding.logical_rules(cfg.mesh)
    boxed = jax.eval_shape(lambda r: _boxed_init(model, r), jax.random.key(0))
    abstract_params, param_sh = sharding.param_shardings(boxed, mesh, rules)
    tx, schedules = optim.make_optimizer(cfg.train.optimizer, cfg.train.trainable, total_steps)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = sharding.opt_state_shardings(abstract_opt, abstract_params, param_sh, mesh)
    rep = NamedSharding(mesh, P())
    state_sh = {"step": rep, "params": param_sh, "opt_state": opt_sh, "rng": rep}
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_params,
        "opt_state": abstract_opt,
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
    }
    abstract = sharding.with_shardings(abstract, state_sh)

    mask = optim.trainable_mask(abstract_params, cfg.train.trainable)
    flat_mask = traverse_util.flatten_dict(mask, sep="/")
    keys = frozenset(k for k, m in flat_mask.items() if m)
    shapes = data_lib.batch_shapes(cfg, cfg.train.global_batch_size)
    batch_sh = {k: sharding.batch_sharding(mesh, len(s)) for k, (s, _) in shapes.items()}

    opts = step_lib.StepOptions(
        trainable_keys=keys,
        grad_accum_steps=cfg.train.grad_accum_steps,
        z_loss=cfg.train.z_loss,
        loss_vocab_chunk=cfg.train.loss_vocab_chunk,
        loss_tokens_per_row=cfg.train.loss_tokens_per_row,
        nan_policy=cfg.train.nan_policy,
        dropout=cfg.model.lora.rank > 0 and cfg.model.lora.dropout > 0,
    )
    train_step = step_lib.jit_train_step(step_lib.build_train_step(model, tx, opts, mesh), state_sh, batch_sh, mesh, rules)
    eval_step = step_lib.jit_eval_step(
        step_lib.build_eval_step(model, cfg.train.loss_vocab_chunk, cfg.train.loss_tokens_per_row), param_sh, batch_sh, mesh,
        rules,
    )

    def init(rng):
        params = nn.unbox(_boxed_init(model, rng))
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.fold_in(rng, 1)),
        }

    init_fn = jax.jit(lambda seed: init(jax.random.key(seed)), out_shardings=state_sh)
    return Setup(
        cfg=cfg, model=model, mesh=mesh, tx=tx, schedules=schedules, total_steps=total_steps,
        abstract_state=abstract, state_shardings=state_sh, batch_shardings=batch_sh, trainable_keys=keys,
        num_params=optim.count_params(abstract_params), num_trainable=optim.count_params(abstract_params, mask),
        train_step=train_step, eval_step=eval_step, init_fn=init_fn,
    )


def abstract_batch(setup: Setup) -> dict:
    shapes = data_lib.batch_shapes(setup.cfg, setup.cfg.train.global_batch_size)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=setup.batch_shardings[k]) for k, (s, d) in shapes.items()}


def replace_params(state: dict, params: Any, strict_shapes: bool = True) -> tuple[dict, list[str]]:
    """Overwrite state params with `params` leaves present in both trees (same shape); returns
    the paths kept from initialisation (e.g. new LoRA adapters)."""
    cur = traverse_util.flatten_dict(state["params"], sep="/")
    new = traverse_util.flatten_dict(params, sep="/")
    kept = []
    out = {}
    for k, v in cur.items():
        if k in new:
            if tuple(new[k].shape) != tuple(v.shape):
                raise ValueError(f"init_from: {k} has shape {tuple(new[k].shape)}, the model expects {tuple(v.shape)}")
            out[k] = jax.device_put(new[k], v.sharding).astype(v.dtype)
        else:
            kept.append(k)
            out[k] = v
    extra = sorted(set(new) - set(cur))
    if extra:
        raise ValueError(f"init_from: checkpoint has {len(extra)} params the model lacks, e.g. {extra[0]}")
    return {**state, "params": traverse_util.unflatten_dict(out, sep="/")}, kept


def host_rng_seed(seed: int) -> np.ndarray:
    return np.asarray(seed, np.uint32)
