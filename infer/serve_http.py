"""The HTTP side of infer.serve (aiohttp): OpenAI-compatible routes, the chat page, JSON errors.

    POST /v1/chat/completions   OpenAI chat completions (stream: true -> server-sent events)
    GET  /v1/models             the one served model
    GET  /health                {"status": "ok", ...engine counters}
    GET  /                      the web chat page

Every failure is answered as OpenAI's {"error": {...}} JSON with its status (4xx for the client's
mistakes: malformed JSON, wrong types, unknown model, a body over --max-body-mb, a bad image, a
prompt too long for the context); nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Optional

from aiohttp import web

from infer import runner, serve_api
from infer.serve_api import ApiError
from infer.serve_engine import Engine, Job
from vlm_jax.data.errors import SkipExample
from vlm_jax.data.templates import TemplateError

log = logging.getLogger("infer.serve")
DRAIN_BYTES = 256 * 2**20  # an oversized body is read this far before the connection is dropped
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")


class Service:
    """What the handlers share: the engine, the loaded model and the server's settings."""

    def __init__(self, engine: Engine, model_name: str, *, image_root: Optional[str] = None,
                 default_max_tokens: int = 256, defaults: Optional[dict] = None):
        self.engine, self.m, self.template = engine, engine.m, engine.template
        self.model_name, self.image_root = model_name, image_root
        self.default_max_tokens = default_max_tokens
        self.defaults = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, **(defaults or {})}
        self.context = runner.context_length(engine.m)
        self.created = int(time.time())

    def job(self, req: serve_api.ChatRequest, emit) -> Job:
        """Decode the images and tokenize the conversation (CPU work, off the event loop)."""
        try:
            images = [runner.image_from_bytes(self.m, data, name) for data, name in req.images]
        except SkipExample as e:
            raise serve_api.bad(f"bad image: {e.detail or e.reason}", code="invalid_image") from None
        try:
            ids = runner.conversation_ids(self.m, self.template, req.conversation)
        except TemplateError as e:
            raise serve_api.bad(f"messages: {e}", "messages") from None
        room = self.context - len(ids)
        want = req.max_tokens if req.max_tokens is not None else min(self.default_max_tokens, room)
        if room < 1 or len(ids) + want > self.context:
            raise serve_api.bad(
                f"this model's context is {self.context} tokens; the prompt takes {len(ids)} (images included) "
                f"and {want} were asked for the answer", "messages", "context_length_exceeded")
        pick = lambda v, k: self.defaults[k] if v is None else v  # noqa: E731
        return Job(ids, images, want, emit, temperature=pick(req.temperature, "temperature"),
                   top_p=pick(req.top_p, "top_p"), top_k=pick(req.top_k, "top_k"),
                   seed=req.seed if req.seed is not None else self.defaults.get("seed"), stop=req.stop)


def _error_response(e: ApiError) -> web.Response:
    return web.json_response(e.body(), status=e.status)


@web.middleware
async def errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return _error_response(e)
    except web.HTTPRequestEntityTooLarge as e:
        await _drain(request)
        return _error_response(ApiError(413, f"the request body is larger than the server's limit ({e.text})",
                                        code="request_too_large"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        return _error_response(ApiError(e.status, e.reason or "error", type=kind))
    except Exception:  # a bug of ours: say so, keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        return _error_response(ApiError(500, "internal server error", type="server_error"))


async def _drain(request: web.Request, most: int = DRAIN_BYTES) -> None:
    """Read and drop the rest of an oversized body (up to `most` bytes), so that a client which
    sends the whole body before reading gets the 413 instead of a reset connection."""
    left = most
    while left > 0:
        data = await request.content.read(min(left, 2**20))
        if not data:
            return
        left -= len(data)


def _chunk(cid: str, created: int, model: str, delta: dict, finish: Optional[str] = None) -> bytes:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    svc: Service = request.app["service"]
    raw = await request.read()  # over client_max_size -> 413
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise serve_api.bad(f"the body is not valid JSON: {e}") from None
    req = serve_api.parse_chat(body, svc.model_name, svc.image_root)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    emit = lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)  # noqa: E731
    job = await loop.run_in_executor(None, svc.job, req, emit)
    svc.engine.submit(job)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    usage = lambda ev: {"prompt_tokens": len(job.ids), "completion_tokens": ev["completion_tokens"],  # noqa: E731
                        "total_tokens": len(job.ids) + ev["completion_tokens"]}
    try:
        if not req.stream:
            while True:
                ev = await events.get()
                if "error" in ev:
                    raise ApiError(500, ev["error"], type="server_error")
                if "done" in ev:
                    return web.json_response({
                        "id": cid, "object": "chat.completion", "created": created, "model": svc.model_name,
                        "system_fingerprint": None,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": ev["text"]},
                                     "logprobs": None, "finish_reason": ev["finish_reason"]}],
                        "usage": usage(ev)})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(_chunk(cid, created, svc.model_name, {"role": "assistant", "content": ""}))
        while True:
            ev = await events.get()
            if "delta" in ev:
                await resp.write(_chunk(cid, created, svc.model_name, {"content": ev["delta"]}))
            elif "error" in ev:
                err = ApiError(500, ev["error"], type="server_error").body()
                await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                break
            else:
                await resp.write(_chunk(cid, created, svc.model_name, {}, ev["finish_reason"]))
                if req.include_usage:
                    tail = {"id": cid, "object": "chat.completion.chunk", "created": created,
                            "model": svc.model_name, "system_fingerprint": None, "choices": [], "usage": usage(ev)}
                    await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
                break
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        job.cancelled = True  # the client went away: its row stops at the next segment
        raise


async def models(request: web.Request) -> web.Response:
    svc: Service = request.app["service"]
    return web.json_response({"object": "list", "data": [
        {"id": svc.model_name, "object": "model", "created": svc.created, "owned_by": "vlm-jax"}]})


async def health(request: web.Request) -> web.Response:
    svc: Service = request.app["service"]
    return web.json_response({"status": "ok", "model": svc.model_name, **svc.engine.stats()})


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE, headers={"Cache-Control": "no-cache"})


def make_app(service: Service, max_body_mb: float = 20.0) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=int(max_body_mb * 2**20))
    app["service"] = service
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/", page)
    return app
