"""Fixtures for the backend tests: a real gateway over HTTP to use as an OpenAI upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from backend_support import Live, serve

from engine.echo import EchoEngine
from engine.protocol import GenerateChunk, GenerateRequest, Usage
from gateway.app import create_app
from gateway.settings import Settings


class FakeStreamingEngine(EchoEngine):
    """A fake engine (echo tokenizer) that streams its reply one byte per `delay_s`, so that
    streaming and aborts through an upstream can be observed."""

    def __init__(self, delay_s: float = 0.01) -> None:
        super().__init__(engine_id="stream-0", model="stream")
        self.delay_s = delay_s
        self.aborted = 0

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        prompt = request.prompt_token_ids or list((request.prompt_text or "").encode())
        reply = b"abcdefghijklmnopqrstuvwxyz" * 8
        n = request.sampling.max_tokens
        finished = False
        try:
            for i in range(n):
                await asyncio.sleep(self.delay_s)
                token = reply[i % len(reply)]
                last = i == n - 1
                yield GenerateChunk(
                    request_id=request.request_id,
                    token_ids=[token],
                    text=chr(token),
                    finish_reason="length" if last else None,
                    usage=Usage(len(prompt), n) if last else None,
                )
            finished = True
        finally:
            if not finished:
                self.aborted += 1


@pytest.fixture(scope="module")
def echo_upstream() -> Iterator[Live]:
    """A Parrot gateway over the echo engine, served by uvicorn on a free port."""
    live = serve(create_app(Settings(echo=True, health_interval_s=0.2)))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def streaming_upstream() -> Iterator[tuple[Live, FakeStreamingEngine]]:
    engine = FakeStreamingEngine()
    live = serve(create_app(Settings(local_engine=False, health_interval_s=0.2), [engine]))
    yield live, engine
    live.stop()
