"""Generation: prefill, then a compiled decode loop over a KV cache. Pure and jit-able.

Prompts come as a padded batch `tokens` [B, L] with `prompt_mask` [B, L] (left- or right-padded, or
holes anywhere): every row gets its own RoPE positions (`cumsum(mask) - 1`) and its own key mask, so
padding never changes a row's result. Generated token i of every row is written at cache index L + i;
the cache holds S = L + max_new_tokens positions.

Layout: by default the decoder layers run unrolled, each over its own cache {"k","v"} [B,S,KV,hd],
with the stacked (nn.scan) layer params sliced into a per-layer list once, before the loop. On CPU
this decodes faster than a cache stacked under a layer scan (`unroll_layers=False`, kept for
comparison; see bench/generate.py).

Decoding runs in segments: `decode(state, limit)` advances until `limit` tokens exist (or every row
stopped), so a caller can stream by calling it with growing limits; `generate` runs it once.
Sampling is seeded per step (`fold_in(rng, step)`), so segmenting never changes the sample.
A batch of keys (`rng` of shape [B]) and per-row knobs (`row_knobs`) give every row its own seed and
temperature/top-k/top-p (a server batching unrelated requests): a row's sample then does not
depend on the rows beside it.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.config import ModelConfig
from vlm_jax.models.attention import FUSED_IMPLS, resolve_impl, rope_cos_sin, rope_inv_freq
from vlm_jax.models.llama import DecoderLayer
from vlm_jax.models.vlm import VLM

NO_TOKEN = -1  # stop-sequence filler that matches nothing


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    eos_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # token-id sequences that end a row (included in the output)
    pad_id: int = 0  # written after a row stopped
    return_logits: bool = False  # keep the [B, max_new_tokens, V] logits (tests)
    unroll_layers: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class DecodeState(NamedTuple):
    step: jax.Array  # scalar int32: tokens generated so far (all rows)
    tokens: jax.Array  # [B, max_new] generated ids (pad after a row stopped)
    done: jax.Array  # [B] bool
    num_tokens: jax.Array  # [B] generated ids per row, the stop token included
    cache: Any  # per layer [{"k","v"}] or stacked {"k","v"} [layers, B, S, KV, hd]
    key_valid: jax.Array  # [B, S] bool: prompt keys (generated keys are valid up to the step)
    lengths: jax.Array  # [B] real prompt tokens per row (the first generated position)
    rng: jax.Array
    knobs: dict  # temperature / top_k / top_p as arrays
    logits: Optional[jax.Array]  # [B, max_new, V] when return_logits


# ----------------------------------------------------------------------------- sampling


def sample_logits(logits: jax.Array, rng: jax.Array, sc: SamplingConfig, knobs: Optional[dict] = None) -> jax.Array:
    """[B, V] float32 -> [B] int32. HF's warper order: temperature, top-k, top-p.

    `knobs` holds temperature/top_k/top_p as traced scalars (see `sampling_knobs`) or per-row [B]
    arrays (`row_knobs`, whose `greedy` rows take the argmax), so changing them never recompiles;
    only greedy-or-not is static. `rng` is one key or one key per row."""
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if sc.greedy:
        return best
    knobs = sampling_knobs(sc) if knobs is None else knobs
    col = {k: jnp.reshape(v, (-1, 1)) for k, v in knobs.items()}  # scalars -> [1, 1], rows -> [B, 1]
    vocab = logits.shape[-1]
    logits = logits.astype(jnp.float32) / col["temperature"]
    desc = -jnp.sort(-logits, axis=-1)
    k = jnp.where(col["top_k"] > 0, jnp.minimum(col["top_k"], vocab), vocab)
    desc = jnp.where(jnp.arange(vocab)[None] < k, desc, -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    # keep a token while the tokens ranked above it have not reached top_p (the top one always stays)
    keep = ((jnp.cumsum(probs, axis=-1) - probs) < col["top_p"]) | (col["top_p"] >= 1.0)
    keep = keep & (jnp.arange(vocab)[None] < k)
    count = jnp.maximum(keep.sum(axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(desc, count - 1, axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
    if rng.ndim:  # a key per row
        drawn = jax.vmap(lambda r, x: jax.random.categorical(r, x))(rng, logits).astype(jnp.int32)
    else:
        drawn = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    return jnp.where(knobs["greedy"], best, drawn) if "greedy" in knobs else drawn


def _step_key(rng: jax.Array, step) -> jax.Array:
    """The sampling key of `step`: fold_in of the batch key, or of every row's key."""
    if rng.ndim:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, step)
    return jax.random.fold_in(rng, step)


def sampling_knobs(sc: SamplingConfig) -> dict:
    return {"temperature": jnp.float32(max(sc.temperature, 1e-6)), "top_k": jnp.int32(sc.top_k),
            "top_p": jnp.float32(sc.top_p)}


def row_knobs(temperature: Sequence[float], top_k: Sequence[int], top_p: Sequence[float]) -> dict:
    """Per-row knobs ([B] arrays); a row with temperature 0 decodes greedily."""
    t = np.asarray(temperature, np.float32)
    return {"temperature": jnp.asarray(np.maximum(t, 1e-6)), "top_k": jnp.asarray(np.asarray(top_k, np.int32)),
            "top_p": jnp.asarray(np.asarray(top_p, np.float32)), "greedy": jnp.asarray(t <= 0.0)}


def static_part(sc: SamplingConfig) -> SamplingConfig:
    """What the compiled functions depend on (the knobs are passed as arrays)."""
    return dataclasses.replace(sc, temperature=0.0 if sc.greedy else 1.0, top_k=0, top_p=1.0)


def _stop_table(sc: SamplingConfig) -> Optional[np.ndarray]:
    """Stop sequences right-aligned in [NS, W], NO_TOKEN-filled on the left (a wildcard)."""
    seqs = [tuple(s) for s in sc.stop_sequences if len(s) > 0]
    if not seqs:
        return None
    width = max(len(s) for s in seqs)
    table = np.full((len(seqs), width), NO_TOKEN, np.int32)
    for i, s in enumerate(seqs):
        table[i, width - len(s):] = s
    return table


def _hits_stop(tokens: jax.Array, step: jax.Array, new: jax.Array, sc: SamplingConfig) -> jax.Array:
    """[B] bool: `new` (just written at `step`) is an EOS id or ends a stop sequence."""
    hit = jnp.zeros(new.shape, bool)
    for e in sc.eos_ids:
        hit = hit | (new == e)
    table = _stop_table(sc)
    if table is None:
        return hit
    width = table.shape[1]
    padded = jnp.pad(tokens, ((0, 0), (width, 0)), constant_values=NO_TOKEN - 1)
    window = jax.lax.dynamic_slice_in_dim(padded, step + 1, width, axis=1)  # ends at `step`
    table = jnp.asarray(table)
    match = (table[None] == NO_TOKEN) | (window[:, None, :] == table[None])
    return hit | jnp.all(match, axis=-1).any(axis=-1)


# ----------------------------------------------------------------------------- model pieces


def layer_params(params: dict, num_layers: int, unroll: bool = True):
    """The decoder's layer params as a per-layer list (unrolled) or one stacked tree (scan).
    Accepts both the scanned layout (`layers/...` with a leading axis) and `layers_{i}`."""
    dec = params["decoder"]
    if "layers" in dec:
        stacked = dec["layers"]
        if not unroll:
            return stacked
        return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)]
    per_layer = [dec[f"layers_{i}"] for i in range(num_layers)]
    return per_layer if unroll else jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)


def _prefill_fused(cfg: ModelConfig) -> bool:
    """The prompt attends over itself: the fused kernels apply (decode steps use the cache einsum)."""
    return resolve_impl(cfg.attention) in FUSED_IMPLS


def _layer_module(cfg: ModelConfig) -> DecoderLayer:
    # "blocked" attention is a training-time layout for L x L masks; cached attention is [L, S]
    impl = resolve_impl(cfg.attention)
    impl = impl if impl in ("dot_product",) + FUSED_IMPLS else "xla"
    return DecoderLayer(cfg.decoder, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                        attention_impl=impl, attention_blocks=cfg.attention_blocks)


def _run_layers(cfg: ModelConfig, layers, x, cos, sin, mask, cache, index, unroll: bool, segment_ids=None):
    layer = _layer_module(cfg)

    def one(p, h, c):
        return layer.apply({"params": p}, h, cos, sin, mask, segment_ids=segment_ids, cache=c, cache_index=index)

    if unroll:
        new_cache = []
        for p, c in zip(layers, cache):
            x, c = one(p, x, c)
            new_cache.append(c)
        return x, new_cache

    def body(h, pc):
        p, c = pc
        return one(p, h, c)

    return jax.lax.scan(body, x, (layers, cache))


def _final_logits(model: VLM, params: dict, h: jax.Array) -> jax.Array:
    return model.apply({"params": params}, h, method=lambda m, h: m.decoder.logits(m.decoder.norm(h)))


def _rope(cfg: ModelConfig, positions: jax.Array):
    d = cfg.decoder
    return rope_cos_sin(positions, rope_inv_freq(d.dim_per_head, d.rope_theta, d.rope_scaling), jnp.dtype(cfg.dtype))


def init_cache(cfg: ModelConfig, batch: int, size: int, unroll: bool = True):
    d = cfg.decoder
    shape = (batch, size, d.kv_heads, d.dim_per_head)
    dt = jnp.dtype(cfg.dtype)
    if unroll:
        return [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(d.num_layers)]
    return {"k": jnp.zeros((d.num_layers, *shape), dt), "v": jnp.zeros((d.num_layers, *shape), dt)}


# ----------------------------------------------------------------------------- prefill / decode


def prefill(cfg: ModelConfig, params: dict, batch: dict, rng: jax.Array, sc: SamplingConfig,
            knobs: Optional[dict] = None) -> DecodeState:
    """Run the prompts (`tokens`, `prompt_mask`, optional `images` [B,M,K,H,W,3]) through the model,
    fill the caches and sample the first token of every row."""
    knobs = sampling_knobs(sc) if knobs is None else knobs
    model = VLM(cfg)
    tokens = batch["tokens"]
    b, length = tokens.shape
    prompt_mask = batch.get("prompt_mask")
    if prompt_mask is None:
        prompt_mask = jnp.ones_like(tokens, bool)
    prompt_mask = prompt_mask.astype(bool)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    lengths = prompt_mask.sum(axis=1).astype(jnp.int32)
    key_valid = jnp.pad(prompt_mask, ((0, 0), (0, sc.max_new_tokens)))
    q = jnp.arange(length)
    # causal over in-row order, real keys only; a padding query sees itself (keeps softmax finite):
    # as segments, the real tokens are one and every padding position is its own
    segments, mask = None, None
    if _prefill_fused(cfg):
        segments = jnp.where(prompt_mask, 1, -2 - q[None, :]).astype(jnp.int32)
    else:
        mask = (prompt_mask[:, None, :] & (q[None, None, :] <= q[None, :, None])) | (q[None, None, :] == q[None, :, None])

    # segment ids and positions let AlignGPT's gate see only each prompt's own text (others ignore them)
    x = model.apply({"params": params}, {"tokens": tokens, "images": batch.get("images"),
                                         "segment_ids": prompt_mask.astype(jnp.int32), "positions": positions},
                    method=lambda m, bt: m.embed_inputs(bt))
    cos, sin = _rope(cfg, positions)
    layers = layer_params(params, cfg.decoder.num_layers, sc.unroll_layers)
    # the prompt attends over its own L keys; the cache grows to S afterwards
    cache = init_cache(cfg, b, length, sc.unroll_layers)
    h, cache = _run_layers(cfg, layers, x, cos, sin, mask, cache, 0, sc.unroll_layers, segments)
    seq_axis = 1 if sc.unroll_layers else 2
    cache = jax.tree.map(lambda c: jnp.pad(c, [(0, sc.max_new_tokens) if a == seq_axis else (0, 0)
                                              for a in range(c.ndim)]), cache)
    last = jnp.max(jnp.where(prompt_mask, q[None], -1), axis=1)  # last real prompt token per row
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)
    logits = _final_logits(model, params, h_last)[:, 0]

    first = sample_logits(logits, _step_key(rng, 0), sc, knobs)
    out = jnp.full((b, sc.max_new_tokens), sc.pad_id, jnp.int32).at[:, 0].set(first)
    done = _hits_stop(out, jnp.int32(0), first, sc)
    all_logits = None
    if sc.return_logits:
        all_logits = jnp.zeros((b, sc.max_new_tokens, logits.shape[-1]), jnp.float32).at[:, 0].set(logits)
    return DecodeState(jnp.int32(1), out, done, jnp.ones((b,), jnp.int32), cache, key_valid, lengths, rng, knobs,
                       all_logits)


def decode_step(cfg: ModelConfig, params: dict, layers, state: DecodeState, sc: SamplingConfig) -> DecodeState:
    """Feed the last generated token of every row, sample the next one."""
    model = VLM(cfg)
    step = state.step
    b = state.tokens.shape[0]
    prev = jax.lax.dynamic_index_in_dim(state.tokens, step - 1, axis=1, keepdims=False)
    x = params["decoder"]["embed_tokens"]["embedding"][prev][:, None, :].astype(jnp.dtype(cfg.dtype))
    size = state.key_valid.shape[1]
    prompt_len = size - sc.max_new_tokens
    index = prompt_len + step - 1
    positions = (state.lengths + step - 1)[:, None]
    cos, sin = _rope(cfg, positions)
    kidx = jnp.arange(size)[None, :]
    mask = (state.key_valid | ((kidx >= prompt_len) & (kidx <= index)))[:, None, :]
    h, cache = _run_layers(cfg, layers, x, cos, sin, mask, state.cache, index, sc.unroll_layers)
    logits = _final_logits(model, params, h)[:, 0]

    new = sample_logits(logits, _step_key(state.rng, step), sc, state.knobs)
    new = jnp.where(state.done, sc.pad_id, new)
    tokens = jax.lax.dynamic_update_index_in_dim(state.tokens, new, step, axis=1)
    done = state.done | _hits_stop(tokens, step, new, sc)
    num = state.num_tokens + (~state.done).astype(jnp.int32)
    all_logits = state.logits
    if sc.return_logits:
        all_logits = jax.lax.dynamic_update_index_in_dim(all_logits, logits, step, axis=1)
    return state._replace(step=step + 1, tokens=tokens, done=done, num_tokens=num, cache=cache, logits=all_logits)


def decode(cfg: ModelConfig, params: dict, state: DecodeState, limit: jax.Array, sc: SamplingConfig) -> DecodeState:
    """Decode until `limit` (<= max_new_tokens) tokens exist or every row stopped (a while_loop)."""
    layers = layer_params(params, cfg.decoder.num_layers, sc.unroll_layers)  # sliced once, outside the loop
    limit = jnp.minimum(limit, sc.max_new_tokens)

    def cond(s):
        return (s.step < limit) & ~jnp.all(s.done)

    return jax.lax.while_loop(cond, lambda s: decode_step(cfg, params, layers, s, sc), state)


# ----------------------------------------------------------------------------- entry points


@partial(jax.jit, static_argnames=("cfg", "sc"))
def prefill_jit(params, batch, rng, knobs, *, cfg: ModelConfig, sc: SamplingConfig) -> DecodeState:
    return prefill(cfg, params, batch, rng, sc, knobs)


@partial(jax.jit, static_argnames=("cfg", "sc"), donate_argnames=("state",))
def decode_jit(params, state, limit, *, cfg: ModelConfig, sc: SamplingConfig) -> DecodeState:
    return decode(cfg, params, state, limit, sc)


def generate(cfg: ModelConfig, params: dict, batch: dict, sc: SamplingConfig, rng: Optional[jax.Array] = None,
             chunk: int = 0, on_tokens=None, knobs: Optional[dict] = None) -> DecodeState:
    """Prefill + decode. With `chunk` > 0 the loop runs in segments of `chunk` tokens and
    `on_tokens(state)` is called after the prefill and after every segment (streaming); it may
    return a [B] bool array of rows to stop there (a caller's own stop rule or token budget).
    `knobs` (see `row_knobs`) replaces the sampling config's temperature/top-k/top-p."""
    cfg, params = merge_lora(cfg, params)
    cfg = hashable_config(cfg)
    params = jax.tree.map(jnp.asarray, params)
    rng = jax.random.key(0) if rng is None else rng
    knobs, sc = (sampling_knobs(sc) if knobs is None else knobs), static_part(sc)

    def report(state):
        stop = None if on_tokens is None else on_tokens(state)
        return state if stop is None else state._replace(done=state.done | jnp.asarray(stop, bool))

    state = report(prefill_jit(params, batch, rng, knobs, cfg=cfg, sc=sc))
    limit = 1
    while True:
        limit = sc.max_new_tokens if chunk <= 0 else min(limit + chunk, sc.max_new_tokens)
        state = report(decode_jit(params, state, jnp.int32(limit), cfg=cfg, sc=sc))
        if limit >= sc.max_new_tokens or bool(jax.device_get(jnp.all(state.done))):
            return state


def merge_lora(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """Fold LoRA adapters into the kernels (decoding runs plain layers); no-op without adapters."""
    lora = getattr(cfg, "lora", None)
    if lora is None or lora.rank <= 0:
        return cfg, params
    from vlm_jax.models.lora import merged

    return dataclasses.replace(cfg, lora=dataclasses.replace(lora, rank=0)), merged(params, lora)


def hashable_config(cfg: ModelConfig) -> ModelConfig:
    """ModelConfig with its dict/list fields frozen, so it can be a static jit argument."""
    try:
        hash(cfg)
        return cfg
    except TypeError:
        pass
    return _FrozenConfig.wrap(cfg)


class _FrozenConfig:
    """Hashes by the config's repr; attribute access passes through (the config is never mutated)."""

    def __init__(self, cfg):
        self._cfg = cfg
        self._key = repr(cfg)

    @classmethod
    def wrap(cls, cfg):
        return cfg if isinstance(cfg, cls) else cls(cfg)

    def __getattr__(self, name):
        return getattr(self._cfg, name)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _FrozenConfig) and self._key == other._key


def stop_sequences_for(tokenizer, stop_strings: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Token sequences for stop strings, as they tokenize alone and after a space. The loop stops on
    them early; callers still cut the decoded text at the first stop string."""
    out = []
    for s in stop_strings:
        for variant in (s, " " + s):
            ids = tuple(int(i) for i in tokenizer.encode(variant))
            if ids and ids not in out:
                out.append(ids)
    return tuple(out)
