"""The jitted update step of one stage: the model, its optimizer and the sharded state shapes
(`build_step`, what train/trainer.py, compile-only planning and the benchmarks build), and the step
functions under it.

Only trainable leaves are differentiated (frozen ones get neither weight gradients nor optimizer
state and are passed through bitwise unchanged). Gradient accumulation runs inside the step as a
`lax.scan` over micro-batches; the loss is the mean over the supervised tokens of the whole global
batch, however it is split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import data as data_lib
from vlm_jax import losses, optim, sharding
from vlm_jax.config import Config
from vlm_jax.models.vlm import VLM
from vlm_jax.sharding import BATCH_AXES

MODEL_KEYS = ("tokens", "segment_ids", "positions", "images", "image_mask")
OPTIONAL_MODEL_KEYS = ("align_level",)  # AlignGPT


@dataclass
class TrainStep:
    """The model, its optimizer, the sharded state shapes and the jitted steps over them (compile-only
    planning and benchmarks build the same)."""

    model: Any
    tx: optax.GradientTransformation
    schedules: dict  # trainable group -> LR schedule
    abstract_state: dict  # ShapeDtypeStructs carrying shardings
    state_shardings: dict
    abstract_batch: dict  # ShapeDtypeStructs of the global batch, with the batch sharding
    train_step: Callable  # (state, batch) -> (state, metrics); donates the state
    eval_step: Callable  # (params, batch) -> LossSums
    init: Callable  # seed -> sharded state


def _boxed_init(model, rng):
    """Params still wrapped in their nn.Partitioned logical-axis boxes."""
    return model.init_boxed(rng) if hasattr(model, "init_boxed") else model.init_params(rng)


def build_step(cfg: Config, mesh, total_steps: int, model=None) -> TrainStep:
    model = model if model is not None else VLM(cfg.model)
    rules = sharding.logical_rules(cfg.mesh)
    boxed = jax.eval_shape(lambda r: _boxed_init(model, r), jax.random.key(0))
    abstract_params, param_sh = sharding.param_shardings(boxed, mesh, rules)
    tx, schedules = optim.make_optimizer(cfg.train.optimizer, cfg.train.trainable, total_steps)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = sharding.opt_state_shardings(abstract_opt, abstract_params, param_sh, mesh)
    rep = NamedSharding(mesh, P())
    state_sh = {"step": rep, "params": param_sh, "opt_state": opt_sh, "rng": rep}
    abstract = sharding.with_shardings({
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": abstract_params,
        "opt_state": abstract_opt,
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
    }, state_sh)
    shapes = data_lib.batch_shapes(cfg, cfg.train.global_batch_size)
    batch_sh = {k: sharding.batch_sharding(mesh, len(s)) for k, (s, _) in shapes.items()}
    abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sh[k]) for k, (s, d) in shapes.items()}

    mask = traverse_util.flatten_dict(optim.trainable_mask(abstract_params, cfg.train.trainable), sep="/")
    opts = StepOptions(
        trainable_keys=frozenset(k for k, m in mask.items() if m),
        grad_accum_steps=cfg.train.grad_accum_steps,
        z_loss=cfg.train.z_loss,
        loss_vocab_chunk=cfg.train.loss_vocab_chunk,
        loss_tokens_per_row=cfg.train.loss_tokens_per_row,
        nan_policy=cfg.train.nan_policy,
        dropout=cfg.model.lora.rank > 0 and cfg.model.lora.dropout > 0,
    )
    train_step = jit_train_step(build_train_step(model, tx, opts, mesh), state_sh, batch_sh, mesh, rules)
    eval_step = jit_eval_step(build_eval_step(model, cfg.train.loss_vocab_chunk, cfg.train.loss_tokens_per_row),
                              param_sh, batch_sh, mesh, rules)

    def init(rng):
        params = nn.unbox(_boxed_init(model, rng))
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.fold_in(rng, 1)),
        }

    init_fn = jax.jit(lambda seed: init(jax.random.key(seed)), out_shardings=state_sh)
    return TrainStep(model, tx, schedules, abstract, state_sh, abstract_batch, train_step, eval_step, init_fn)


@dataclass(frozen=True)
class StepOptions:
    trainable_keys: frozenset  # flattened "a/b/c" param paths that are trained
    grad_accum_steps: int = 1
    z_loss: float = 0.0
    loss_vocab_chunk: int = 0
    loss_tokens_per_row: int = 0
    nan_policy: str = "stop"  # stop | skip
    dropout: bool = False  # feed a "dropout" rng to the model (LoRA dropout)


def _flat(tree: Any) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat: dict) -> Any:
    return traverse_util.unflatten_dict(flat, sep="/")


def lm_head_kernel(params: Any) -> jax.Array:
    """[D, V] output projection (the transposed embedding when tied)."""
    dec = params["decoder"]
    if "lm_head" in dec:
        head = dec["lm_head"]
        return head["kernel"] if isinstance(head, dict) else head
    return dec["embed_tokens"]["embedding"].T


def make_loss_sums(model) -> Callable[..., losses.LossSums]:
    """loss_sums(params, batch, vocab_chunk, rng, tokens_per_row) -> LossSums.

    tokens_per_row > 0 applies the lm_head only at each row's supervised positions (SFT supervises a
    few answer tokens per row, so most of the [B, L, V] logits are never used); a batch with a row
    holding more supervised tokens than that takes the full path, so the result is the same either way.
    """

    def loss_sums(params, batch, vocab_chunk=0, rng=None, tokens_per_row=0):
        inputs = {k: batch[k] for k in MODEL_KEYS}
        inputs.update({k: batch[k] for k in OPTIONAL_MODEL_KEYS if k in batch})
        kw = {"rngs": {"dropout": rng}} if rng is not None else {}
        targets, mask = batch["targets"], batch["loss_mask"].astype(bool)
        if not vocab_chunk and not tokens_per_row:
            logits = model.apply({"params": params}, inputs, **kw)
            return losses.cross_entropy_sums(logits, targets, mask)
        hidden = model.apply({"params": params}, inputs, return_hidden=True, **kw)

        kernel = lm_head_kernel(params)

        def sums(h, t, m):
            if vocab_chunk:
                return losses.chunked_cross_entropy_sums(h, kernel, t, m, vocab_chunk)
            logits = jnp.einsum("bld,dv->blv", h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
            return losses.cross_entropy_sums(logits, t, m)

        if not tokens_per_row:
            return sums(hidden, targets, mask)
        return jax.lax.cond(
            mask.sum(-1).max() <= tokens_per_row,
            lambda: sums(*losses.gather_supervised(hidden, targets, mask, tokens_per_row)),
            lambda: sums(hidden, targets, mask),
        )

    return loss_sums


def split_microbatches(batch: dict, n: int, mesh) -> dict:
    """[B, ...] -> [n, B/n, ...] where micro-batch i takes rows i, i+n, ... so every device keeps
    its own rows (no resharding) as long as n divides the per-device batch."""

    def one(x):
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
        spec = P(None, BATCH_AXES, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(one, batch)


def build_train_step(model, tx, opts: StepOptions, mesh) -> Callable:
    loss_sums = make_loss_sums(model)

    def step(state, batch):
        flat = _flat(state["params"])
        train = {k: v for k, v in flat.items() if k in opts.trainable_keys}
        frozen = {k: v for k, v in flat.items() if k not in opts.trainable_keys}
        num_tokens = batch["loss_mask"].astype(jnp.float32).sum()
        next_rng, step_rng = jax.random.split(jax.random.wrap_key_data(state["rng"]))

        def grads_of(mb, i):
            rng = jax.random.fold_in(step_rng, i) if opts.dropout else None

            def f(tr):
                sums = loss_sums(_unflat({**tr, **frozen}), mb, opts.loss_vocab_chunk, rng, opts.loss_tokens_per_row)
                return losses.total_loss(sums, num_tokens, opts.z_loss), sums

            (_, sums), g = jax.value_and_grad(f, has_aux=True)(train)
            return g, sums

        if opts.grad_accum_steps == 1:
            grads, sums = grads_of(batch, 0)
        else:
            def body(carry, xs):
                g, s = grads_of(*xs)
                return (jax.tree.map(jnp.add, carry[0], g), carry[1] + s), None

            init = (jax.tree.map(jnp.zeros_like, train), losses.LossSums.zeros())
            micro = (split_microbatches(batch, opts.grad_accum_steps, mesh), jnp.arange(opts.grad_accum_steps))
            (grads, sums), _ = jax.lax.scan(body, init, micro)

        grad_norm = optax.global_norm(grads)
        full_grads = _unflat({**grads, **{k: jnp.zeros_like(v) for k, v in frozen.items()}})
        updates, new_opt = tx.update(full_grads, state["opt_state"], state["params"])
        upd = _flat(updates)
        new_train = {k: optax.apply_updates(v, upd[k]) for k, v in train.items()}

        loss = losses.total_loss(sums, num_tokens, opts.z_loss)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_params = _unflat({**keep(new_train, train), **frozen})
        advance = finite if opts.nan_policy == "stop" else jnp.bool_(True)
        new_state = {
            "step": state["step"] + advance.astype(state["step"].dtype),
            "params": new_params,
            "opt_state": keep(new_opt, state["opt_state"]),
            "rng": jax.random.key_data(next_rng),
        }
        metrics = {
            "loss": sums.nll / jnp.maximum(sums.count, 1.0),
            "z_loss": sums.z / jnp.maximum(sums.count, 1.0),
            "total_loss": loss,
            "grad_norm": grad_norm,
            "token_accuracy": sums.correct / jnp.maximum(sums.count, 1.0),
            "supervised_tokens": sums.count,
            "tokens": (batch["segment_ids"] > 0).sum().astype(jnp.float32),
            "images": batch["image_mask"].sum().astype(jnp.float32) * batch["images"].shape[2],
            "finite": finite,
        }
        return new_state, metrics

    return step


def build_eval_step(model, loss_vocab_chunk: int = 0, loss_tokens_per_row: int = 0) -> Callable:
    loss_sums = make_loss_sums(model)

    def step(params, batch):
        return loss_sums(params, batch, loss_vocab_chunk, None, loss_tokens_per_row)

    return step


def with_activation_rules(fn: Callable, mesh, rules) -> Callable:
    """`fn` traced with `mesh` and the logical-axis `rules` in context, so that the model's
    `nn.with_logical_constraint`s on activations (rows over data/fsdp, heads, mlp and vocab over
    tensor, as the rules say) become sharding constraints; outside that context they are no-ops."""
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return traced


def jit_train_step(step_fn, state_shardings, batch_shardings, mesh, rules):
    rep = NamedSharding(mesh, P())
    return jax.jit(
        with_activation_rules(step_fn, mesh, rules),
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )


def jit_eval_step(step_fn, param_shardings, batch_shardings, mesh, rules):
    rep = NamedSharding(mesh, P())
    return jax.jit(with_activation_rules(step_fn, mesh, rules), in_shardings=(param_shardings, batch_shardings),
                   out_shardings=rep)
