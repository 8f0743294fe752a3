"""Serve a model over an OpenAI-compatible API, with a web chat page:

    python -m infer.serve --checkpoint CKPT [--port 8000] [--max-batch 8] [--image-root DIR]

then open http://HOST:PORT/ in a browser, or point any OpenAI client at http://HOST:PORT/v1:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in the image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}])

The model options are infer.sample's. The decoding options are the defaults of requests that do
not set `temperature`, `top_p`, `top_k`, `seed` or `max_tokens` (greedy unless told otherwise).
Requests arriving within --batch-wait-ms of each other are decoded in one batch of up to
--max-batch rows; see docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from infer import options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_options(p)
    options.add_decoding_options(p, max_new_tokens=256)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="0 = any free port (printed)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests decoded together")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--chunk", type=int, default=8, help="tokens decoded between two streamed updates")
    p.add_argument("--image-root", help="folder whose files requests may name as image paths (default: none)")
    p.add_argument("--served-model-name", help="the model id of the API (default: the checkpoint folder name)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body accepted")
    p.add_argument("--warmup-prompt-tokens", type=int, default=0,
                   help="before serving, compile every batch-size and prompt-length bucket up to this many prompt "
                        "tokens (images included) for --max-new-tokens answers with one image (0 = compile on "
                        "first use)")
    p.set_defaults(seed=None)  # a request without a seed gets a fresh one (OpenAI's behaviour)
    return p


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    options.check(args, parser)
    if args.max_batch < 1 or args.chunk < 1 or args.batch_wait_ms < 0 or args.max_body_mb <= 0 \
            or args.warmup_prompt_tokens < 0:
        parser.error("need --max-batch >= 1, --chunk >= 1, --batch-wait-ms >= 0, --max-body-mb > 0, "
                     "--warmup-prompt-tokens >= 0")
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port}: not a port number")
    if args.image_root and not os.path.isdir(args.image_root):
        parser.error(f"--image-root {args.image_root}: no such folder")


def build_app(args: argparse.Namespace):
    """Load the model and return (aiohttp app, service) for these options."""
    from infer import serve_http
    from infer.serve_engine import Engine

    m, template, sc = options.load(args)
    engine = Engine(m, template, sc, max_batch=args.max_batch, wait_ms=args.batch_wait_ms, chunk=args.chunk)
    if args.warmup_prompt_tokens:
        import time

        t0 = time.perf_counter()
        n = engine.warmup(args.warmup_prompt_tokens, args.max_new_tokens, images=int(m.cfg.vision is not None))
        logging.getLogger("infer.serve").info("warm-up: %d shapes compiled in %.1f s", n, time.perf_counter() - t0)
    defaults = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed}
    service = serve_http.Service(engine, args.served_model_name or m.name, image_root=args.image_root,
                                 default_max_tokens=args.max_new_tokens, defaults=defaults)
    return serve_http.make_app(service, args.max_body_mb), service


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import socket

    from aiohttp import web

    app, service = build_app(args)
    sock = socket.create_server((args.host, args.port), reuse_port=False)
    host, port = sock.getsockname()[:2]
    print(f"serving {service.model_name!r} on http://{host}:{port}/ (OpenAI API at http://{host}:{port}/v1)",
          file=sys.stderr, flush=True)
    try:
        web.run_app(app, sock=sock, print=None, access_log=None)
    finally:
        service.engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
