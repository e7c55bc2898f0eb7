"""How responses leave the gateway: raw JSON responses, SSE streams, disconnect detection.

SSE follows OpenAI: `data: {json}\\n\\n` frames ending in `data: [DONE]\\n\\n`; a failure
after the stream started is one `data: {"error": {...}}` frame, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from litestar.types import Receive, Scope, Send

from gateway.errors import ApiError
from gateway.protocol.responses import ENCODER

DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
_JSON = (b"content-type", b"application/json")


class JsonResponse:
    """A finished JSON body as a bare ASGI app: the hot path skips Litestar's Response
    machinery (header merging, cookies, encoders), which costs more than the work itself."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
        self.body = body
        self.headers = headers
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [_JSON, (b"content-length", str(len(self.body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def frame(payload: Any) -> bytes:
    return b"data: " + ENCODER.encode(payload) + b"\n\n"


def error_frame(error: ApiError) -> bytes:
    return frame(error.body())


class SseResponse:
    """A text/event-stream of pre-encoded frames as a bare ASGI app; `close` always runs after.

    Not Litestar's `Stream`: that one runs every stream in an anyio task group with a
    level-triggered cancel scope (costly, and cleanup awaits inside it get cancelled again).
    Disconnects are detected by the caller (`watch_disconnect`), which ends `frames`.
    """

    __slots__ = ("close", "frames", "gone", "headers")

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        headers: dict[str, str],
        gone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.frames = frames
        self.close = close
        self.headers = headers
        self.gone = gone  # True once the client left (its watcher may cancel this task)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = list(_SSE_HEADERS)
        headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for data in self.frames:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.gone():
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            await self.frames.aclose()  # type: ignore[attr-defined]
            await self.close()


def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> asyncio.Task[None]:
    """Call `on_disconnect` if the client goes away before the task is cancelled.

    The request body has been read by then, so the next ASGI message can only be
    `http.disconnect` (servers also send it once the response is complete).
    """

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                on_disconnect()
                return

    return asyncio.create_task(watch())


def header(scope: Scope, name: bytes) -> str | None:
    """One request header straight from the ASGI scope (lower-case `name`)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
