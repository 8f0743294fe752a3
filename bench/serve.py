"""A bounded load test of infer.serve on 127.0.0.1, next to infer.sample's batch throughput.

    python -m bench.serve [--checkpoint CKPT] [--requests 200] [--concurrency 16] [--max-tokens 32]

Starts `python -m infer.serve` as a child process on a free loopback port and sends --requests
streamed chat completions, each with an image and a question, --concurrency at a time (the server
compiles its shape buckets first: --warmup-prompt-tokens; --concurrency requests are sent before
measuring). Reports:
requests answered, latency p50/p95, time to first token (first content chunk) p50/p95, generated
tokens/s over the whole measured pass, the batches the server formed, and whether anything was
compiled during the measured pass. Then, with the server stopped, infer.sample's code path
(`runner.run` over batches of --max-batch prompts) generates for the same prompts: its tokens/s is
the reference. Every request is greedy with --max-tokens; a random model rarely stops early.

Without --checkpoint a random model of configs/demo/model.yaml's size is built, with a tokenizer
trained on a small generated shape-world set (demo.make_data) whose held-out questions and images
are the requests. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model to serve (default: a random demo-sized model)")
    p.add_argument("--template", help="chat template (default: from the tokenizer)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="infer.serve --batch-wait-ms")
    p.add_argument("--warmup-prompt-tokens", type=int, default=128, help="infer.serve --warmup-prompt-tokens")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="infer.serve --max-batch and the reference batch size")
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds in all")
    return p


def demo_prompts(folder: str) -> tuple[str, list[tuple[str, str]]]:
    """A small generated shape-world set in `folder` -> (its tokenizer folder, [(question, image path)])."""
    from demo import make_data

    data = os.path.join(folder, "data")
    make_data.main(["--out", data, "--num-train", "200", "--num-eval", "40", "--quiet"])
    prompts = []
    for lang in sorted(os.listdir(os.path.join(data, "eval"))):
        qfile = os.path.join(data, "eval", lang, "question.jsonl")
        if os.path.isfile(qfile):
            with open(qfile, encoding="utf-8") as f:
                for line in f:
                    q = json.loads(line)
                    prompts.append((q["text"], os.path.join(data, "eval", "images", q["image"])))
    return os.path.join(data, "tokenizer"), prompts


def random_model(folder: str, tokenizer: str) -> str:
    """A randomly initialised model of configs/demo/model.yaml's size, saved as a CKPT folder."""
    import jax

    from vlm_jax import config_io
    from vlm_jax.checkpoint import save_model_checkpoint
    from vlm_jax.config import ModelConfig
    from vlm_jax.models.vlm import VLM

    cfg = config_io.from_dict(ModelConfig, config_io.load_yaml("configs/demo/model.yaml")["model"], "model")
    params = jax.device_get(VLM(cfg).init_params(jax.random.key(0)))
    return save_model_checkpoint(os.path.join(folder, "ckpt"), params, cfg, tokenizer_dir=tokenizer)


def start_server(args, ckpt: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "infer.serve", "--checkpoint", ckpt, "--port", "0", "--max-batch",
           str(args.max_batch), "--max-new-tokens", str(args.max_tokens), "--batch-wait-ms", str(args.batch_wait_ms),
           "--warmup-prompt-tokens", str(args.warmup_prompt_tokens)]
    if args.template:
        cmd += ["--template", args.template]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"on (http://[\d.]+:\d+)/", line)
        if m:
            break
    else:
        raise SystemExit(f"infer.serve did not start (exit {proc.wait()})")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain its log: a full pipe would block it
    return proc, m.group(1)


async def one(session, url: str, model: str, question: str, image: str, max_tokens: int) -> dict:
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
            "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": question}]}]}
    t0 = time.perf_counter()
    first, tokens, text = None, 0, []
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            return {"ok": False, "status": resp.status, "error": await resp.text()}
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                text.append(chunk["choices"][0]["delta"]["content"])
    end = time.perf_counter()
    return {"ok": True, "latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens, "text": "".join(text)}


async def load(url: str, model: str, items: list, concurrency: int, max_tokens: int) -> tuple[list, float]:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def bounded(q, im):
            async with sem:
                return await one(session, url, model, q, im, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(bounded(q, im) for q, im in items))
        return results, time.perf_counter() - t0


def data_url(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def get_json(url: str) -> dict:
    import urllib.request

    return json.loads(urllib.request.urlopen(url, timeout=60).read())


def pct(xs: list, q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def reference(ckpt: str, template, prompts: list, batch: int, max_tokens: int) -> dict:
    """infer.sample --prompts --batch-size `batch`: the same runner.run calls, timed on a second pass
    (the first compiles every prompt-length shape the batches need)."""
    from infer import runner

    m = runner.load(ckpt)
    template = template or runner.default_template(m.tokenizer)
    sc = runner.sampling(m, template, max_tokens)
    rows = [(runner.prompt_ids(m, template, q, 1), [runner.load_image(m, im)]) for q, im in prompts]
    for s in range(0, len(rows), batch):  # compile
        runner.run(m, template, rows[s : s + batch], sc, s, num_rows=batch)
    t0, tokens = time.perf_counter(), 0
    for s in range(0, len(rows), batch):
        tokens += sum(len(o) for o in runner.run(m, template, rows[s : s + batch], sc, s, num_rows=batch))
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": wall, "tokens_per_second": tokens / wall}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.max_tokens, args.max_batch) < 1 or args.batch_wait_ms < 0:
        parser.error("--requests, --concurrency, --max-tokens and --max-batch must be >= 1, --batch-wait-ms >= 0")
    if args.checkpoint and not os.path.isdir(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint}: no such folder")
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, prompts = demo_prompts(tmp)
        ckpt = args.checkpoint or random_model(tmp, tokenizer)
        prompts = (prompts * (1 + args.requests // len(prompts)))[: args.requests]
        items = [(q, data_url(im)) for q, im in prompts]
        t0 = time.perf_counter()
        proc, url = start_server(args, ckpt)  # returns once the server listens (after its warm-up)
        warm_s = time.perf_counter() - t0
        try:
            model = get_json(url + "/v1/models")["data"][0]["id"]
            asyncio.run(load(url, model, items[: args.concurrency], args.concurrency, args.max_tokens))
            before = get_json(url + "/health")
            remaining = deadline - time.monotonic()
            results, wall = asyncio.run(asyncio.wait_for(load(url, model, items, args.concurrency, args.max_tokens),
                                                         max(remaining, 1)))
            after = get_json(url + "/health")
        finally:
            proc.terminate()
            proc.wait(60)
        ok = [r for r in results if r["ok"]]
        lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok]
        gen_tokens = sum(r["tokens"] for r in ok)
        batches = after["batches"] - before["batches"]
        ref = reference(ckpt, args.template, prompts, args.max_batch, args.max_tokens)
    out = {"requests": args.requests, "answered": len(ok), "concurrency": args.concurrency,
           "max_tokens": args.max_tokens, "max_batch": args.max_batch, "startup_seconds": round(warm_s, 1),
           "wall_seconds": round(wall, 2), "latency_p50": pct(lat, 50), "latency_p95": pct(lat, 95),
           "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "generated_tokens": gen_tokens,
           "tokens_per_second": gen_tokens / wall, "batches": batches,
           "mean_batch": (after["requests"] - before["requests"]) / max(batches, 1),
           "compiled_during_run": after["compiled_functions"] - before["compiled_functions"],
           "reference_tokens_per_second": ref["tokens_per_second"], "reference_seconds": round(ref["seconds"], 2),
           "ratio_to_reference": (gen_tokens / wall) / ref["tokens_per_second"],
           "load_average": os.getloadavg()[0]}
    print(f"answered {len(ok)}/{args.requests} requests ({args.concurrency} concurrent, {args.max_tokens} tokens max) "
          f"in {wall:.1f} s; {batches} batches of {out['mean_batch']:.1f} requests on average")
    print(f"latency p50 {out['latency_p50']:.2f} s  p95 {out['latency_p95']:.2f} s   "
          f"TTFT p50 {out['ttft_p50']:.2f} s  p95 {out['ttft_p95']:.2f} s")
    print(f"generated {gen_tokens} tokens: {out['tokens_per_second']:.1f} tokens/s served vs "
          f"{ref['tokens_per_second']:.1f} tokens/s infer.sample batch {args.max_batch} "
          f"(ratio {out['ratio_to_reference']:.2f}); compiled during the measured pass: {out['compiled_during_run']}")
    print(json.dumps(out))
    return 0 if len(ok) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
