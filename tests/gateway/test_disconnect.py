"""A client that leaves aborts the engine work and frees its contexts (stream or not)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from gateway_support import Live, SlowEngine, serve, settings_for_tests

from gateway.app import create_app

BODY = {"model": "slow", "messages": [{"role": "user", "content": "Talk for a long time."}]}


@pytest.fixture(scope="module")
def slow() -> Iterator[tuple[Live, SlowEngine]]:
    engine = SlowEngine(delay_s=0.02)
    live = serve(create_app(settings_for_tests(), engines=[engine]))
    yield live, engine
    live.stop()


def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_stream_runs_to_the_end(slow: tuple[Live, SlowEngine]) -> None:
    live, engine = slow
    body = {**BODY, "max_tokens": 5, "stream": True}
    with (
        httpx.Client(base_url=live.url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 1 + 5 + 1 + 1  # role, 5 tokens, finish, DONE
    wait_for(lambda: engine.num_contexts == 0)


@pytest.mark.parametrize("n", [1, 2])  # one choice runs inline, several are pumped
def test_stream_disconnect_aborts_and_frees(slow: tuple[Live, SlowEngine], n: int) -> None:
    live, engine = slow
    before = len(engine.closed)
    body = {**BODY, "max_tokens": 2000, "stream": True, "n": n}
    with (
        httpx.Client(base_url=live.url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 6:
                break  # leave mid-stream
    started = time.monotonic()
    wait_for(lambda: len(engine.closed) >= before + n)
    wait_for(lambda: engine.num_contexts == 0)  # every choice, and a forked parent
    assert n == 1 or any(c.endswith("-p") for c in engine.freed)
    assert time.monotonic() - started < 2.0  # far sooner than the 40 s the stream would take


def test_non_streaming_disconnect_aborts(slow: tuple[Live, SlowEngine]) -> None:
    live, engine = slow
    before = len(engine.closed)
    with httpx.Client(base_url=live.url, timeout=0.3) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={**BODY, "max_tokens": 2000})
    wait_for(lambda: len(engine.closed) > before)
    wait_for(lambda: engine.num_contexts == 0)
