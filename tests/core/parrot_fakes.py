"""Named fakes and helpers for the Parrot core tests (importable as `core.parrot_fakes`).

`CopyFakeEngine` answers with the text between the context's last `<<` and `>>`, upper-cased,
so a test can see exactly which values flowed into which call; it records every request
with its scheduling (placement and objective checks) and can fail or stall on demand.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from engine.echo import EchoEngine
from engine.errors import InvalidRequest
from engine.protocol import (
    FillRequest,
    FillResult,
    GenerateChunk,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
    Usage,
)


@dataclass
class Seen:
    kind: str  # "fill" | "generate"
    context_id: str
    parent: str | None
    text: str  # the whole context text when the request arrived (generate: with its prompt)
    objective: str
    group_id: str | None
    app_id: str | None
    followup: bool = False
    at: float = field(default_factory=time.perf_counter)


class CopyFakeEngine(EchoEngine):
    """Byte-tokenized fake: reply = upper(text between the last '<<' and '>>') or 'ok'."""

    def __init__(self, engine_id: str = "fake-0", model: str = "fake") -> None:
        super().__init__(engine_id=engine_id, model=model)
        self.seen: list[Seen] = []
        self.fail_on: str | None = None  # a generate whose context contains this fails
        self.delay_s = 0.0  # per generate, before the reply (lets work overlap)
        self.fill_delay_s = 0.0  # per fill, before it completes
        self.rescheduled: list[RescheduleRequest] = []
        self.started = asyncio.Event()

    def _record(self, kind: str, request: Any, context_id: str, parent: str | None) -> None:
        text = bytes(self._contexts.get(context_id, [])).decode(errors="replace")
        s = request.scheduling
        self.seen.append(
            Seen(kind, context_id, parent, text, s.objective, s.group_id, s.app_id, s.followup)
        )

    async def fill(self, request: FillRequest) -> FillResult:
        result = await super().fill(request)
        self._record("fill", request, request.context_id, request.parent_context_id)
        if self.fill_delay_s:
            await asyncio.sleep(self.fill_delay_s)
        return result

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        self.rescheduled.append(request)
        return Rescheduled(True)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        prompt = request.prompt_token_ids or list((request.prompt_text or "").encode())
        ctx = self._extend(request.context_id, request.parent_context_id, prompt)
        self._record("generate", request, request.context_id, request.parent_context_id)
        self.started.set()
        text = bytes(ctx).decode(errors="replace")
        if self.fail_on is not None and self.fail_on in text:
            raise InvalidRequest(f"fake failure on '{self.fail_on}'")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        start, end = text.rfind("<<"), text.rfind(">>")
        reply = text[start + 2 : end].upper() if 0 <= start < end else "ok"
        data = reply.encode()[: request.sampling.max_tokens]
        ctx.extend(data)
        finish = "length" if len(data) == request.sampling.max_tokens else "stop"
        try:
            yield GenerateChunk(
                request_id=request.request_id,
                token_ids=list(data),
                text=data.decode(errors="replace"),
                finish_reason=finish,
                usage=Usage(len(prompt), len(data)),
            )
        finally:
            if request.free_on_finish:
                await self.free(request.context_id)

    def generates(self) -> list[Seen]:
        return [s for s in self.seen if s.kind == "generate"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RequestCounter:
    """ASGI middleware counting requests by (method, path pattern) on a live server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: dict[tuple[str, str], int] = {}
        self.state = app.state  # tests reach services through it

    @staticmethod
    def _pattern(path: str) -> str:
        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "sessions"]:
            for i, name in ((2, "{sid}"), (4, "{vid}")):
                if len(parts) > i:
                    parts[i] = name
        return "/" + "/".join(parts)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            key = (scope["method"], self._pattern(scope["path"]))
            self.counts[key] = self.counts.get(key, 0) + 1
        await self.app(scope, receive, send)

    def count(self, method: str, pattern: str) -> int:
        return self.counts.get((method, pattern), 0)


@contextmanager
def live_server(app: Any, timeout_s: float = 120.0) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
