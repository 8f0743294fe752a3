"""The server's batching engine: one worker thread owns the model and runs every batch.

Requests (`Job`s) that arrive within `wait_ms` of the first one, up to `max_batch`, are decoded
together by `vlm_jax.generate` in segments of `chunk` tokens; each job's text deltas go to its
`emit` callback after every segment. A batch's shapes are bucketed - rows to a power of two
(capped at max_batch), prompt length and token budget to powers of two, image slots to a power of
two - so a steady stream of requests reuses the compiled prefill/decode. Every row samples with its
own key (`seed`) and knobs, so a request's answer does not depend on the requests batched with it.
A batch runs until its last row is done; requests that arrive meanwhile wait for the next batch.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import secrets
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from infer import runner
from vlm_jax import generate as gen
from vlm_jax.image_layout import image_layout

log = logging.getLogger("infer.serve")


@dataclasses.dataclass
class Job:
    ids: np.ndarray  # prompt ids, images as their placeholders
    images: list  # uint8 [K, H, W, 3] per image
    max_tokens: int
    emit: Callable[[dict], None]  # engine thread: {"delta": text} ..., then {"done": ...} or {"error": ...}
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    cancelled: bool = False  # set by the server when the client went away


def bucket(n: int, lo: int = 1, hi: Optional[int] = None) -> int:
    """The power of two >= max(n, lo), capped at hi."""
    b = max(lo, 1 << max(n - 1, 0).bit_length())
    return min(b, hi) if hi else b


class Engine:
    def __init__(self, m: runner.Loaded, template: str, sc: gen.SamplingConfig, *, max_batch: int = 8,
                 wait_ms: float = 5.0, chunk: int = 8):
        cfg, params = gen.merge_lora(m.cfg, m.params)  # once, not per batch
        self.m = dataclasses.replace(m, cfg=cfg, params=params)
        self.template, self.sc = template, sc
        self.max_batch, self.wait, self.chunk = max_batch, wait_ms / 1000.0, chunk
        self.queue: queue.Queue = queue.Queue()
        self.counts = {"requests": 0, "batches": 0, "rows": 0, "errors": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def stats(self) -> dict:
        compiled = gen.prefill_jit._cache_size() + gen.decode_jit._cache_size()
        return {**self.counts, "queued": self.queue.qsize(), "compiled_functions": compiled}

    def close(self) -> None:
        self._closed = True
        self.queue.put(None)
        self._thread.join(timeout=60)

    # ------------------------------------------------------------------ worker thread

    def _loop(self) -> None:
        while not self._closed:
            first = self.queue.get()
            if first is None:
                return
            jobs, deadline = [first], time.monotonic() + self.wait
            while len(jobs) < self.max_batch:
                try:
                    job = self.queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    break
                if job is None:
                    self._closed = True
                    break
                jobs.append(job)
            jobs = [j for j in jobs if not j.cancelled]
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception as e:  # the server stays up; these requests get a 500
                log.exception("batch of %d failed", len(jobs))
                self.counts["errors"] += 1
                for j in jobs:
                    j.emit({"error": f"generation failed: {type(e).__name__}: {e}"})

    def warmup(self, prompt_tokens: int, max_tokens: int, images: int = 1) -> int:
        """Compile, before serving, every row bucket x prompt-length bucket up to `prompt_tokens`
        for answers of up to `max_tokens` (greedy, `images` image slots) -> shapes compiled."""
        cfg, m = self.m.cfg, self.m
        n_img = image_layout(cfg).tokens_per_image if images else 0
        crops = image_layout(cfg).crops_per_image
        image = np.zeros((crops, cfg.vision.image_size, cfg.vision.image_size, 3), np.uint8)
        rows_buckets = sorted({bucket(r, hi=self.max_batch) for r in range(1, self.max_batch + 1)})
        lengths, length = [], runner.PAD_TO
        while length < max(prompt_tokens, n_img * images + 1):
            lengths.append(length)
            length *= 2
        lengths.append(length)
        done = 0
        for rows in rows_buckets:
            for length in lengths:
                if length <= n_img * images:
                    continue
                ids = np.concatenate([np.full(n_img * images, cfg.image_token_id, np.int32),
                                      np.full(length - n_img * images, m.tokenizer.pad_id, np.int32)])
                job = Job(ids, [image] * images, 1, lambda ev: None)
                self._run([job] * rows, budget=bucket(max_tokens, lo=16), count=False)
                done += 1
        return done

    def _run(self, jobs: list[Job], budget: Optional[int] = None, count: bool = True) -> None:
        n = len(jobs)
        rows = bucket(n, hi=self.max_batch)
        length = bucket(max(len(j.ids) for j in jobs), lo=runner.PAD_TO)
        most_images = max(len(j.images) for j in jobs)
        slots = bucket(most_images) if most_images else 0
        budget = budget or bucket(max(j.max_tokens for j in jobs), lo=16)
        batch = runner.make_batch(self.m, [(j.ids, j.images) for j in jobs], num_rows=rows, length=length,
                                  slots=slots)
        greedy = all(j.temperature <= 0 for j in jobs)
        sc = dataclasses.replace(self.sc, max_new_tokens=budget, temperature=0.0 if greedy else 1.0)
        padded = jobs + [jobs[0]] * (rows - n)
        knobs = gen.row_knobs([j.temperature for j in padded], [j.top_k for j in padded],
                              [j.top_p for j in padded])
        seeds = [secrets.randbits(32) if j.seed is None else j.seed for j in padded]
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
        streams = [runner.TextStream(self.m, self.template, j.stop) for j in jobs]
        finished = [False] * n
        if count:
            self.counts["requests"] += n
            self.counts["batches"] += 1
            self.counts["rows"] += rows

        def on_tokens(state) -> np.ndarray:
            toks, num, done = np.asarray(state.tokens), np.asarray(state.num_tokens), np.asarray(state.done)
            stop = np.ones(rows, bool)
            for i, j in enumerate(jobs):
                if finished[i]:
                    continue
                ids = [int(t) for t in toks[i, : min(int(num[i]), j.max_tokens)]]
                delta = streams[i].update(ids)
                if delta:
                    j.emit({"delta": delta})
                if streams[i].stopped:  # a stop string of the request: count tokens up to it
                    ids = ids[: self._tokens_until_stop(ids, streams[i].stops)]
                stopped = streams[i].stopped or (bool(done[i]) and int(num[i]) <= j.max_tokens)  # EOS / stop ids
                if stopped or len(ids) >= j.max_tokens or j.cancelled:
                    finished[i] = True
                    reason = "stop" if stopped else "length"
                    rest = streams[i].finish(ids)
                    if rest:
                        j.emit({"delta": rest})
                    j.emit({"done": True, "finish_reason": reason, "completion_tokens": len(ids),
                            "text": runner.decode_text(self.m, self.template, ids, j.stop)})
                else:
                    stop[i] = False
            return stop

        gen.generate(self.m.cfg, self.m.params, batch, sc, keys, chunk=self.chunk, on_tokens=on_tokens, knobs=knobs)
        for i, j in enumerate(jobs):  # the loop ended (token budget) before a row reported done
            if not finished[i]:
                j.emit({"error": "generation ended early"})

    def _tokens_until_stop(self, ids: list, stops) -> int:
        """The fewest leading ids whose text already contains a stop string."""
        for k in range(1, len(ids) + 1):
            text = self.m.tokenizer.decode(ids[:k], skip_special_tokens=True)
            if runner.cut_at_stop(text, stops) != text:
                return k
        return len(ids)
