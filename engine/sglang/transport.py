"""How the SGLang backend reaches SGLang: the `Transport` protocol and its HTTP implementation.

Both transports take the same generate requests (`requests.py`) and give back the same
`Output`s (`outputs.py`), so request mapping and response parsing are shared:
`HttpTransport` posts them to a launched server's native API, `InProcessTransport`
(`inprocess.py`) hands them to an `sglang.Engine` running in this process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from engine.errors import EngineError, EngineUnavailable
from engine.openai.errors import decode_event, upstream_error
from engine.openai.replay import send
from engine.openai.sse import data_events
from engine.openai.tokenizer import TextTokenizer, UpstreamTokenizer
from engine.openai.wire import ENCODER, MODELS
from engine.sglang.config import SGLangConfig
from engine.sglang.outputs import OUTPUT, Output


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What a started transport learnt about the model it serves."""

    model: str
    context_length: int | None
    tokenizer: TextTokenizer | None  # SGLang's own (/tokenize, or the runtime's); None: none


class Transport(Protocol):
    where: str  # names the SGLang in error messages

    async def start(self) -> ServerFacts: ...

    async def close(self) -> None: ...

    async def health(self) -> bool: ...

    async def generate(self, body: dict[str, Any]) -> Output:
        """A request with `stream: false`: its one output."""

    def stream(self, body: dict[str, Any]) -> AsyncIterator[Output]:
        """A request with `stream: true`. Failures raise typed engine errors; closing the
        iterator early stops the request."""

    async def abort(self, rid: str) -> None:
        """Abort the streamed request `rid`, if it still runs."""


class HttpTransport:
    """A launched SGLang server: `/generate` (SSE when streamed), `/abort_request`,
    `/v1/models`, `/tokenize`, `/health`."""

    def __init__(self, config: SGLangConfig) -> None:
        assert config.url is not None
        self.url = config.url.rstrip("/")
        self.where = f"sglang server {self.url}"
        self._model = config.model
        self._health_timeout_s = config.health_timeout_s
        self._client = httpx.AsyncClient(
            headers={"content-type": "application/json"},
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._streams: dict[str, httpx.Response] = {}

    async def _call(self, method: str, path: str, body: Any) -> httpx.Response:
        content = None if body is None else ENCODER.encode(body)
        return await send(self._client, method, f"{self.url}{path}", "sglang server", content)

    async def start(self) -> ServerFacts:
        response = await self._call("GET", "/v1/models", None)
        cards = MODELS.decode(response.content).data
        card = next((c for c in cards if self._model in (None, c.id)), None)
        if card is None:
            raise EngineUnavailable(f"{self.where} does not serve the model")
        tokenizer = UpstreamTokenizer(self._client, self.url, card.id)
        return ServerFacts(card.id, card.max_model_len, tokenizer)

    async def close(self) -> None:
        for response in list(self._streams.values()):
            await response.aclose()
        await self._client.aclose()

    async def health(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            response = await self._client.get(f"{self.url}/health", timeout=self._health_timeout_s)
            return response.status_code == 200
        return False

    async def generate(self, body: dict[str, Any]) -> Output:
        return OUTPUT.decode((await self._call("POST", "/generate", body)).content)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Output]:
        url = f"{self.url}/generate"
        rid = body["rid"]
        try:
            async with self._client.stream("POST", url, content=ENCODER.encode(body)) as response:
                if response.status_code >= 400:
                    raise upstream_error(url, response.status_code, await response.aread())
                self._streams[rid] = response
                async for payload in data_events(response.aiter_lines()):
                    yield decode_event(OUTPUT, payload, "sglang", url)
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise EngineUnavailable(f"sglang {url} failed mid-stream: {exc}") from exc
        finally:
            self._streams.pop(rid, None)

    async def abort(self, rid: str) -> None:
        response = self._streams.get(rid)
        if response is None:
            return
        with contextlib.suppress(EngineError):
            await self._call("POST", "/abort_request", {"rid": rid})
        await response.aclose()  # SGLang also aborts a request whose client went away
