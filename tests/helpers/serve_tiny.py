"""infer.serve on the tiny clip-llama model, run in a background thread for the serving tests."""

from __future__ import annotations

import asyncio
import base64
import threading

from tests.helpers.infer_tiny import tiny, write_image, write_tokenizer
from vlm_jax.checkpoint import save_model_checkpoint


def model_folder(root) -> str:
    """The tiny clip-llama model as a CKPT folder with its tokenizer."""
    _, cfg, params = tiny("clip-llama")
    tok = write_tokenizer(str(root / "tok"))
    return save_model_checkpoint(str(root / "ckpt"), params, cfg, tokenizer_dir=tok)


def data_url(path) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


class BackgroundServer:
    """`python -m infer.serve ARGV` on 127.0.0.1 (a free port) in a thread; `.url`, `.stop()`."""

    def __init__(self, argv: list[str]):
        from aiohttp import web

        from infer import serve

        parser = serve.build_parser()
        args = parser.parse_args(argv + ["--host", "127.0.0.1", "--port", "0"])
        serve.check(args, parser)
        self.app, self.service = serve.build_app(args)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.app, access_log=None)
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(60)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.service.engine.close()


__all__ = ["BackgroundServer", "data_url", "model_folder", "write_image"]
