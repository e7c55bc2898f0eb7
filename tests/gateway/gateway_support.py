"""Helpers for the gateway tests: live servers in threads, CLI subprocesses, fake engines."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from engine.echo import EchoEngine
from engine.errors import EngineError
from engine.protocol import GenerateChunk, GenerateRequest, Usage
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Live:
    """A uvicorn server running an ASGI app in a background thread."""

    app: Any
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(app: Any) -> Live:
    port = free_port()
    config = uvicorn.Config(app, port=port, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    return Live(app, server, thread, port)


def settings_for_tests(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"echo": True, "health_interval_s": 0.2, "health_timeout_s": 1.0}
    values.update(overrides)
    return Settings(**values)


class SlowEngine(EchoEngine):
    """A fake engine streaming one 'A' per `delay_s`, recording closed and freed contexts."""

    def __init__(self, engine_id: str = "slow-0", model: str = "slow", delay_s: float = 0.02):
        super().__init__(engine_id=engine_id, model=model)
        self.delay_s = delay_s
        self.closed: list[str] = []
        self.freed: list[str] = []

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        prompt = request.prompt_token_ids or []
        self._extend(request.context_id, request.parent_context_id, prompt)
        count = request.sampling.max_tokens
        try:
            for i in range(count):
                await asyncio.sleep(self.delay_s)
                last = i == count - 1
                yield GenerateChunk(
                    request_id=request.request_id,
                    token_ids=[65],
                    text="A",
                    finish_reason="length" if last else None,
                    usage=Usage(len(prompt), count) if last else None,
                )
        finally:
            self.closed.append(request.request_id)
            if request.free_on_finish:
                await self.free(request.context_id)

    async def free(self, context_id: str) -> None:
        await super().free(context_id)
        self.freed.append(context_id)

    @property
    def num_contexts(self) -> int:
        return len(self._contexts)


class NoPenaltyEngine(EchoEngine):
    """A fake engine that declares it cannot apply presence/frequency penalties."""

    def __init__(self) -> None:
        super().__init__(engine_id="nopen-0", model="nopen")
        self._info = msgspec.structs.replace(self._info, supports_penalties=False)


class DownEngine(EchoEngine):
    """A fake engine whose health check always fails."""

    def __init__(self) -> None:
        super().__init__(engine_id="down-0", model="down")

    async def health(self) -> bool:
        return False


def spawn(*args: str) -> subprocess.Popen[bytes]:
    """`parrot ARGS` in a subprocess (the real CLI entry point)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class FailingEngine(EchoEngine):
    """A fake engine that streams one chunk and then fails (a mid-stream engine error)."""

    def __init__(self) -> None:
        super().__init__(engine_id="failing-0", model="failing")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        yield GenerateChunk(request_id=request.request_id, token_ids=[80], text="P")
        raise EngineError("the engine fell over")


def assert_openai_error(
    response: Any, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """`response` has `status` and exactly OpenAI's error body; returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code
    assert error["param"] == param
    return error
