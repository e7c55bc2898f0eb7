"""`RemoteEngine`: an `EngineClient` that talks to an engine server (engine/server.py) over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import httpx
import msgspec

from engine.errors import EngineError, EngineUnavailable, error_from_wire
from engine.protocol import (
    ChatMessage,
    EngineInfo,
    EngineStats,
    ErrorInfo,
    FillRequest,
    FillResult,
    GenerateChunk,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
)
from engine.server import (
    JSON,
    ContextId,
    RenderChatBody,
    RequestId,
    Text,
    TokenIds,
    TokenizeBody,
)

T = TypeVar("T")

ENCODER = msgspec.json.Encoder()
_CHUNK = msgspec.json.Decoder(GenerateChunk)
_ERROR = msgspec.json.Decoder(ErrorInfo)
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t)
    for t in (
        EngineInfo,
        EngineStats,
        FillResult,
        TokenIds,
        Text,
        RequestId,
        ContextId,
        Rescheduled,
    )
}
_HEADERS = {"content-type": JSON}


class RemoteEngine:
    """One engine server at `url`. `start()` fetches its `EngineInfo`; until then `info` raises.

    Transport failures (refused, reset, timed out) raise `EngineUnavailable` so that the
    gateway can mark the engine down and route elsewhere; errors the engine reports are
    rebuilt as the same typed `EngineError`.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 300.0,
        health_timeout_s: float = 2.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._info: EngineInfo | None = None
        self._health_timeout = httpx.Timeout(health_timeout_s)
        # Long reads are legitimate (a queued prefill); a dead peer fails fast on connect/reset.
        self._client = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineUnavailable(f"engine {self.url} has not been reached yet")
        return self._info

    async def start(self) -> None:
        self._info = await self._call("GET", "/engine/info", None, EngineInfo)

    async def close(self) -> None:
        await self._client.aclose()

    def _unavailable(self, exc: Exception) -> EngineUnavailable:
        return EngineUnavailable(f"engine {self.url} unreachable: {type(exc).__name__}: {exc}")

    def _error(self, status: int, content: bytes) -> EngineError:
        try:
            info = _ERROR.decode(content)
        except msgspec.MsgspecError:
            text = content[:200].decode(errors="replace")
            if status in (502, 503, 504):
                return EngineUnavailable(f"engine {self.url} answered {status}: {text}")
            return EngineError(f"engine {self.url} answered {status}: {text}")
        return error_from_wire(info.code, info.message, info.param)

    async def _call(self, method: str, path: str, body: Any, result: type[T]) -> T:
        content = None if body is None else ENCODER.encode(body)
        try:
            response = await self._client.request(method, path, content=content, headers=_HEADERS)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code >= 400:
            raise self._error(response.status_code, response.content)
        return _DECODERS[result].decode(response.content)

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = TokenizeBody(text, add_special_tokens)
        return (await self._call("POST", "/engine/tokenize", body, TokenIds)).token_ids

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        body = TokenIds(list(token_ids))
        return (await self._call("POST", "/engine/detokenize", body, Text)).text

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        body = RenderChatBody(list(messages), add_generation_prompt)
        return (await self._call("POST", "/engine/render_chat", body, Text)).text

    async def fill(self, request: FillRequest) -> FillResult:
        return await self._call("POST", "/engine/fill", request, FillResult)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Stream chunks; closing this iterator early closes the connection, which aborts."""
        content = ENCODER.encode(request)
        try:
            async with self._client.stream(
                "POST", "/engine/generate", content=content, headers=_HEADERS
            ) as response:
                if response.status_code >= 400:
                    raise self._error(response.status_code, await response.aread())
                buffer = b""
                async for data in response.aiter_bytes():
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        chunk = _CHUNK.decode(line)
                        if chunk.error is not None:
                            raise error_from_wire(
                                chunk.error.code, chunk.error.message, chunk.error.param
                            )
                        yield chunk
                        if chunk.finish_reason is not None:
                            return
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from exc
        raise EngineUnavailable(f"engine {self.url} ended the stream without finishing")

    async def abort(self, request_id: str) -> None:
        await self._call("POST", "/engine/abort", RequestId(request_id), RequestId)

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        return await self._call("POST", "/engine/reschedule", request, Rescheduled)

    async def free(self, context_id: str) -> None:
        await self._call("POST", "/engine/free", ContextId(context_id), ContextId)

    async def stats(self) -> EngineStats:
        return await self._call("GET", "/engine/stats", None, EngineStats)

    async def health(self) -> bool:
        with contextlib.suppress(httpx.TransportError):
            response = await self._client.get("/engine/health", timeout=self._health_timeout)
            return response.status_code == 200
        return False
