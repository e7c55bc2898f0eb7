"""HTTP server for one engine: the `EngineClient` protocol as msgspec JSON routes (`parrot engine`).

Every route takes and returns msgspec JSON. `/engine/generate` streams newline-delimited
`GenerateChunk`s; an error after the stream started travels as a chunk with `error` set, and
a client that disconnects aborts the request (the engine iterator is closed). Any other
engine error becomes `{"code", "message", "param"}` with the error's HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, Scope, Send

from engine.client import EngineClient
from engine.errors import EngineError, InvalidRequest
from engine.protocol import (
    ChatMessage,
    ErrorInfo,
    FillRequest,
    GenerateChunk,
    GenerateRequest,
    RescheduleRequest,
)

log = logging.getLogger(__name__)

JSON = "application/json"
NDJSON = "application/x-ndjson"
_NDJSON = [(b"content-type", NDJSON.encode())]


# HTTP bodies of the routes that wrap plain arguments of the EngineClient methods.
class TokenizeBody(msgspec.Struct, frozen=True):
    text: str
    add_special_tokens: bool = False


class TokenIds(msgspec.Struct, frozen=True):
    token_ids: list[int]


class Text(msgspec.Struct, frozen=True):
    text: str


class RenderChatBody(msgspec.Struct, frozen=True):
    messages: list[ChatMessage]
    add_generation_prompt: bool = True


class RequestId(msgspec.Struct, frozen=True):
    request_id: str


class ContextId(msgspec.Struct, frozen=True):
    context_id: str


class Health(msgspec.Struct, frozen=True):
    ok: bool


ENCODER = msgspec.json.Encoder()
_BODIES = (
    FillRequest,
    GenerateRequest,
    TokenizeBody,
    TokenIds,
    RenderChatBody,
    RequestId,
    ContextId,
    RescheduleRequest,
)
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {t: msgspec.json.Decoder(t) for t in _BODIES}


async def _decode(request: Request[Any, Any, Any], kind: type) -> Any:
    try:
        return _DECODERS[kind].decode(await request.body())
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from exc


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(ENCODER.encode(value), media_type=JSON, status_code=status)


def error_response(exc: EngineError) -> Response[bytes]:
    return _json(ErrorInfo(exc.code, exc.message, exc.param), exc.status)


def _engine(request: Request[Any, Any, Any]) -> EngineClient:
    return request.app.state.engine


@post("/engine/fill", status_code=200)
async def fill(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json(await _engine(request).fill(await _decode(request, FillRequest)))


class _ChunkStream:
    """The NDJSON response of `/engine/generate`, as a bare ASGI app.

    Not Litestar's `Stream`: that one cancels its task group on disconnect with a
    level-triggered anyio scope, which would cancel again every await in the engine's own
    cleanup. Here a watcher cancels the request task once when the client leaves; the engine
    iterator sees a plain CancelledError, and is then closed (which aborts the request).
    """

    def __init__(self, first: GenerateChunk, chunks: AsyncIterator[GenerateChunk]):
        self._first = first
        self._chunks = chunks

    async def _lines(self) -> AsyncIterator[bytes]:
        chunk = self._first
        while True:
            yield ENCODER.encode(chunk) + b"\n"
            if chunk.finish_reason is not None:
                return
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return
            except EngineError as exc:
                info = ErrorInfo(exc.code, exc.message, exc.param)
                chunk = GenerateChunk(
                    request_id=chunk.request_id, finish_reason="error", error=info
                )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _NDJSON})
            async for line in self._lines():
                await send({"type": "http.response.body", "body": line, "more_body": True})
            # Stop watching first: servers report a finished response as a disconnect.
            watcher.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await self._chunks.aclose()  # type: ignore[attr-defined]


@post("/engine/generate", status_code=200)
async def generate(request: Request[Any, Any, Any]) -> ASGIApp:
    body: GenerateRequest = await _decode(request, GenerateRequest)
    chunks = _engine(request).generate(body)
    try:
        # Errors raised before the first chunk (validation, unknown context) get a status.
        first = await anext(chunks)
    except StopAsyncIteration:
        first = GenerateChunk(request_id=body.request_id, finish_reason="abort")
    except BaseException:
        with contextlib.suppress(Exception):
            await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return _ChunkStream(first, chunks)


@post("/engine/abort", status_code=200)
async def abort(request: Request[Any, Any, Any]) -> Response[bytes]:
    body: RequestId = await _decode(request, RequestId)
    await _engine(request).abort(body.request_id)
    return _json(body)


@post("/engine/reschedule", status_code=200)
async def reschedule(request: Request[Any, Any, Any]) -> Response[bytes]:
    body: RescheduleRequest = await _decode(request, RescheduleRequest)
    return _json(await _engine(request).reschedule(body))


@post("/engine/free", status_code=200)
async def free(request: Request[Any, Any, Any]) -> Response[bytes]:
    body: ContextId = await _decode(request, ContextId)
    await _engine(request).free(body.context_id)
    return _json(body)


@get("/engine/stats")
async def stats(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json(await _engine(request).stats())


@get("/engine/info")
async def info(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json(_engine(request).info)


@get("/engine/health")
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    try:
        ok = await _engine(request).health()
    except EngineError:
        ok = False
    return _json(Health(ok), 200 if ok else 503)


@post("/engine/tokenize", status_code=200)
async def tokenize(request: Request[Any, Any, Any]) -> Response[bytes]:
    body: TokenizeBody = await _decode(request, TokenizeBody)
    ids = await _engine(request).tokenize(body.text, body.add_special_tokens)
    return _json(TokenIds(ids))


@post("/engine/detokenize", status_code=200)
async def detokenize(request: Request[Any, Any, Any]) -> Response[bytes]:
    body: TokenIds = await _decode(request, TokenIds)
    return _json(Text(await _engine(request).detokenize(body.token_ids)))


@post("/engine/render_chat", status_code=200)
async def render_chat(request: Request[Any, Any, Any]) -> Response[bytes]:
    body: RenderChatBody = await _decode(request, RenderChatBody)
    text = await _engine(request).render_chat(body.messages, body.add_generation_prompt)
    return _json(Text(text))


def _on_engine_error(_: Request[Any, Any, Any], exc: EngineError) -> Response[bytes]:
    return error_response(exc)


def _on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return _json(ErrorInfo("http_error", exc.detail), exc.status_code)


def _on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("engine route failed", exc_info=exc)
    return _json(ErrorInfo("engine_error", f"internal engine error: {type(exc).__name__}"), 500)


def create_engine_app(engine: EngineClient) -> Litestar:
    """A Litestar app serving `engine`; the app starts and closes the engine with itself."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await asyncio.shield(engine.close())

    app = Litestar(
        route_handlers=[
            fill,
            generate,
            abort,
            reschedule,
            free,
            stats,
            info,
            health,
            tokenize,
            detokenize,
            render_chat,
        ],
        lifespan=[lifespan],
        exception_handlers={
            EngineError: _on_engine_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        openapi_config=None,
        logging_config=None,
    )
    app.state.engine = engine
    return app
