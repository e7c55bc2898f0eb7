"""The engine protocol over HTTP: engine/server.py served by uvicorn, driven by RemoteEngine."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn

from engine.echo import ECHO_REPLY, EchoEngine
from engine.errors import (
    ContextBusy,
    EngineUnavailable,
    InvalidRequest,
    UnknownContext,
)
from engine.protocol import (
    ChatMessage,
    FillRequest,
    GenerateChunk,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
    SamplingParams,
    Scheduling,
)
from engine.remote import RemoteEngine
from engine.server import create_engine_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlowEngine(EchoEngine):
    """A fake engine whose stream yields one token per 50 ms, recording aborts."""

    def __init__(self) -> None:
        super().__init__(engine_id="slow-0")
        self.closed: list[str] = []
        self.rescheduled: list[RescheduleRequest] = []

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        self.rescheduled.append(request)
        return Rescheduled(request.context_id == "live")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        try:
            for i in range(request.sampling.max_tokens):
                await asyncio.sleep(0.05)
                last = i == request.sampling.max_tokens - 1
                yield GenerateChunk(
                    request_id=request.request_id,
                    token_ids=[65],
                    text="A",
                    finish_reason="length" if last else None,
                )
        finally:
            self.closed.append(request.request_id)


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[str, str, SlowEngine]]:
    """One uvicorn server in a thread with an EchoEngine app, and a second with SlowEngine."""
    slow = SlowEngine()
    servers = []
    urls = []
    for engine in (EchoEngine(engine_id="echo-http"), slow):
        port = free_port()
        config = uvicorn.Config(
            create_engine_app(engine), port=port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 10
    while not all(s.started for s in servers):
        assert time.monotonic() < deadline, "engine servers did not start"
        time.sleep(0.01)
    yield urls[0], urls[1], slow
    for server in servers:
        server.should_exit = True


@pytest.fixture
async def remote(engines: tuple[str, str, SlowEngine]) -> AsyncIterator[RemoteEngine]:
    engine = RemoteEngine(engines[0])
    await engine.start()
    yield engine
    await engine.close()


async def test_info_health_stats(remote: RemoteEngine) -> None:
    assert remote.info.engine_id == "echo-http"
    assert remote.info.backend == "echo"
    assert await remote.health()
    stats = await remote.stats()
    assert stats.engine_id == "echo-http"


async def test_tokenize_detokenize_render(remote: RemoteEngine) -> None:
    ids = await remote.tokenize("héllo")
    assert ids == list("héllo".encode())
    assert await remote.detokenize(ids) == "héllo"
    text = await remote.render_chat([ChatMessage("user", "hi")])
    assert text == "<user>hi\n<assistant>"


async def test_generate_round_trip(remote: RemoteEngine) -> None:
    request = GenerateRequest(
        request_id="r1",
        context_id="c1",
        prompt_token_ids=[1, 2, 3],
        sampling=SamplingParams(max_tokens=64),
        free_on_finish=True,
    )
    chunks = [chunk async for chunk in remote.generate(request)]
    assert "".join(c.text for c in chunks) == ECHO_REPLY
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3
    assert (await remote.stats()).num_contexts == 0


async def test_fill_fork_free(remote: RemoteEngine) -> None:
    result = await remote.fill(FillRequest(context_id="parent", token_ids=[5, 6, 7]))
    assert result.num_tokens == 3
    request = GenerateRequest(
        request_id="child",
        context_id="child",
        parent_context_id="parent",
        prompt_token_ids=[8],
        sampling=SamplingParams(max_tokens=4),
    )
    chunks = [chunk async for chunk in remote.generate(request)]
    assert chunks[-1].finish_reason == "length"
    with pytest.raises(ContextBusy):
        await remote.free("parent")
    await remote.free("child")
    await remote.free("parent")
    with pytest.raises(UnknownContext) as info:
        await remote.free("parent")
    assert info.value.status == 404


async def test_reschedule_carries_the_new_scheduling(
    engines: tuple[str, str, SlowEngine],
) -> None:
    engine = RemoteEngine(engines[1])
    await engine.start()
    try:
        latency = Scheduling(objective="latency", priority=1, group_id="g", app_id="t/s")
        request = RescheduleRequest(context_id="live", scheduling=latency)
        assert await engine.reschedule(request) == Rescheduled(True)
        gone = RescheduleRequest(context_id="gone", scheduling=Scheduling())
        assert await engine.reschedule(gone) == Rescheduled(False)
    finally:
        await engine.close()
    assert engines[2].rescheduled[-2:] == [request, gone]


async def test_errors_are_rebuilt(remote: RemoteEngine) -> None:
    bad = GenerateRequest(
        request_id="bad",
        context_id="bad",
        prompt_token_ids=[1],
        sampling=SamplingParams(top_p=0.0),
    )
    with pytest.raises(InvalidRequest) as info:
        async for _ in remote.generate(bad):
            pass
    assert info.value.param == "top_p"
    with pytest.raises(UnknownContext):
        await remote.fill(FillRequest(context_id="x", parent_context_id="missing", token_ids=[1]))


async def test_malformed_body_is_400(engines: tuple[str, str, SlowEngine]) -> None:
    async with httpx.AsyncClient(base_url=engines[0]) as client:
        response = await client.post("/engine/fill", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_unreachable_engine_is_unavailable() -> None:
    engine = RemoteEngine(f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    with pytest.raises(EngineUnavailable):
        await engine.start()
    assert not await engine.health()
    with pytest.raises(EngineUnavailable):
        async for _ in engine.generate(GenerateRequest(request_id="r", context_id="c")):
            pass
    await engine.close()


async def test_closing_the_stream_aborts_on_the_server(
    engines: tuple[str, str, SlowEngine],
) -> None:
    _, url, slow = engines
    engine = RemoteEngine(url)
    await engine.start()
    request = GenerateRequest(
        request_id="long", context_id="long", sampling=SamplingParams(max_tokens=200)
    )
    stream = engine.generate(request)
    first = await anext(stream)
    assert first.text == "A"
    await stream.aclose()
    deadline = time.monotonic() + 5
    while "long" not in slow.closed:
        assert time.monotonic() < deadline, "server did not abort the request"
        await asyncio.sleep(0.02)
    await engine.close()
