"""Upstream HTTP failures as the engine's typed errors (engine/errors.py)."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from engine.errors import (
    ContextLengthExceeded,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    RequestAborted,
)
from engine.openai.wire import ERROR, ErrorDetail

T = TypeVar("T")

_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too long")


def _detail(content: bytes) -> ErrorDetail:
    try:
        return ERROR.decode(content).detail()
    except msgspec.MsgspecError:
        return ErrorDetail(content[:300].decode(errors="replace").strip())


def upstream_error(url: str, status: int, content: bytes) -> EngineError:
    """The engine error for an upstream's error response.

    Bad requests stay bad requests (the gateway answers 400, naming the upstream's reason);
    auth, rate-limit and server failures make the engine unavailable, so the pool routes
    elsewhere and health checks decide when it is back.
    """
    detail = _detail(content)
    message = f"upstream {url} answered {status}: {detail.message or 'no message'}"
    if status == 400 or status == 422:
        lowered = detail.message.lower()
        code = str(detail.code or "")
        if code == "context_length_exceeded" or any(h in lowered for h in _CONTEXT_HINTS):
            return ContextLengthExceeded(message, param=detail.param)
        return InvalidRequest(message, param=detail.param)
    if status == 499:
        return RequestAborted(message)
    if status in (401, 403, 404, 408, 429) or status >= 500:
        return EngineUnavailable(message)
    return EngineError(message, param=detail.param)


def stream_error(url: str, error: object) -> EngineError:
    """An error event inside a stream (after the status line said 200)."""
    if isinstance(error, dict):
        message = str(error.get("message") or error)
        code = error.get("code")
        status = code if isinstance(code, int) else 500
        return upstream_error(url, status, msgspec.json.encode({"error": {"message": message}}))
    return EngineUnavailable(f"upstream {url} failed mid-stream: {error}")


def decode_event(decoder: msgspec.json.Decoder[T], payload: bytes, who: str, url: str) -> T:
    """One streamed event; a malformed one, or one carrying an `error`, raises."""
    try:
        event = decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        raise EngineUnavailable(f"{who} {url} sent a malformed event: {exc}") from exc
    if getattr(event, "error", None) is not None:
        raise stream_error(url, event.error)  # type: ignore[attr-defined]
    return event
