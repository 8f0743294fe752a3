"""OpenAI chat-completions requests -> what the engine needs, and OpenAI-style errors.

`parse_chat(body, model, image_root)` checks a decoded JSON body the way the OpenAI API does
(types, ranges, roles) and returns a `ChatRequest`: the conversation as LLaVA turns with one
`<image>` tag per image (in message order) and the encoded image bytes. Images come as
`image_url` parts holding a `data:image/...;base64,...` URL, or, with `--image-root`, a path (or
file:// URL) inside that folder. Remote http(s) URLs are refused: the server fetches nothing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from typing import Any, Optional
from urllib.parse import unquote, urlparse

from vlm_jax.tokenizer import IMAGE_TOKEN

MAX_STOPS = 4  # as the OpenAI API
_ROLES = {"system": "system", "developer": "system", "user": "human", "assistant": "gpt"}


class ApiError(Exception):
    """An error answered as OpenAI's {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclasses.dataclass
class ChatRequest:
    conversation: list[dict]  # [{"from": system|human|gpt, "value": text with <image> tags}]
    images: list[tuple[bytes, str]]  # (encoded bytes, a name for error messages), in tag order
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage


def _number(body: dict, key: str, lo: float, hi: float, *, lo_open: bool = False) -> Optional[float]:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad(f"'{key}' must be a number", key)
    if v < lo or v > hi or (lo_open and v == lo):
        raise bad(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", key)
    return float(v)


def _integer(body: dict, key: str, lo: int) -> Optional[int]:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{key}' must be an integer", key)
    if v < lo:
        raise bad(f"'{key}' must be >= {lo}, got {v}", key)
    return v


def _stops(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise bad(f"'stop' takes at most {MAX_STOPS} strings", "stop")
    return tuple(s for s in stops if s)


def read_image_url(url: str, image_root: Optional[str], param: str) -> tuple[bytes, str]:
    """A data URL, or a path / file:// URL under image_root -> (bytes, name)."""
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise bad("image data URLs must look like data:image/png;base64,...", param, "invalid_image_url")
        try:
            return base64.b64decode(payload, validate=True), f"{param} (data URL)"
        except (binascii.Error, ValueError):
            raise bad(f"{param}: the base64 image data is broken", param, "invalid_image_url") from None
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise bad(f"{param}: remote image URLs are not fetched; send the image as a data URL", param,
                  "invalid_image_url")
    if parsed.scheme not in ("", "file"):
        raise bad(f"{param}: unsupported image URL scheme {parsed.scheme!r}", param, "invalid_image_url")
    if not image_root:
        raise bad(f"{param}: image paths need the server started with --image-root; send a data URL",
                  param, "invalid_image_url")
    path = unquote(parsed.path) if parsed.scheme == "file" else url
    root = os.path.realpath(image_root)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
        raise bad(f"{param}: {path} is outside --image-root", param, "invalid_image_url")
    try:
        with open(full, "rb") as f:
            return f.read(), path
    except OSError:
        raise bad(f"{param}: no such image file under --image-root: {path}", param, "invalid_image_url") from None


def _content(msg: dict, i: int, image_root: Optional[str], images: list) -> str:
    """A message's content -> its text (parts joined by newlines) after an <image> tag per image part."""
    content = msg.get("content")
    where = f"messages[{i}].content"
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise bad(f"'{where}' must be a string or a list of content parts", where)
    pieces = []
    for j, part in enumerate(parts):
        pwhere = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad(f"'{pwhere}' must be an object with a 'type'", pwhere)
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad(f"'{pwhere}.text' must be a string", pwhere)
            if IMAGE_TOKEN in text:
                raise bad(f"'{pwhere}': the text may not contain {IMAGE_TOKEN}; send images as image_url parts",
                          pwhere)
            pieces.append(text)
        elif part["type"] == "image_url":
            if msg.get("role") != "user":
                raise bad(f"'{pwhere}': images are only allowed in user messages", pwhere)
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise bad(f"'{pwhere}.image_url' must be {{\"url\": \"data:image/...;base64,...\"}}", pwhere)
            images.append(read_image_url(url, image_root, pwhere))
            pieces.append(IMAGE_TOKEN)
        else:
            raise bad(f"'{pwhere}': unsupported content part type {part['type']!r} (text, image_url)", pwhere)
    # LLaVA's convention (as infer.sample): a turn's images go first, each as "<image>\n"
    tags = sum(1 for p in pieces if p == IMAGE_TOKEN)
    return (IMAGE_TOKEN + "\n") * tags + "\n".join(p for p in pieces if p != IMAGE_TOKEN)


def parse_chat(body: Any, model: str, image_root: Optional[str] = None) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise bad("'model' is required (a string)", "model")
    if body["model"] != model:
        raise ApiError(404, f"the model {body['model']!r} does not exist; this server serves {model!r}",
                       param="model", code="model_not_found")
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise bad("only n=1 is supported", "n")
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad(f"'{key}' is not supported", key)
    if body.get("logprobs"):
        raise bad("'logprobs' is not supported", "logprobs")
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, -2.0, 2.0):
            raise bad(f"'{key}' other than 0 is not supported", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    conversation, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            raise bad(f"'messages[{i}].role' must be one of {sorted(_ROLES)}", f"messages[{i}].role")
        role = _ROLES[msg["role"]]
        if role == "system" and i != 0:
            raise bad("a system message may only come first", f"messages[{i}]")
        conversation.append({"from": role, "value": _content(msg, i, image_root, images)})
    if conversation[-1]["from"] != "human":
        raise bad("the last message must be from the user", "messages")

    max_tokens = _integer(body, "max_completion_tokens", 1)
    max_tokens = _integer(body, "max_tokens", 1) if max_tokens is None else max_tokens
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad("'seed' must be an integer", "seed")
    return ChatRequest(conversation, images, max_tokens=max_tokens,
                       temperature=_number(body, "temperature", 0.0, 2.0),
                       top_p=_number(body, "top_p", 0.0, 1.0, lo_open=True), top_k=_integer(body, "top_k", 0),
                       seed=None if seed is None else seed % 2**32, stop=_stops(body), stream=stream,
                       include_usage=bool(options.get("include_usage")))
