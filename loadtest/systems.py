"""Start and stop the systems the application benchmarks compare, each on a free port.

parrot            the project with semantic variables (prefix cache, sharing, objectives)
baseline          the same engine behind its OpenAI endpoint, prefix cache off, FCFS
baseline+apc      the same with automatic prefix caching on (the modern baseline)
baseline-latcap   the baseline capped at 4 running requests (latency-centric, as the paper)
vllm              vLLM's CPU build on the same weights (built by loadtest/vllm_peer.py)
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from loadtest import vllm_peer

FLAGS = {
    "parrot": [],
    "baseline": ["--no-prefix-cache"],
    "baseline+apc": [],
    "baseline-latcap": ["--no-prefix-cache", "--max-batch-size", "4"],
}
CLIENT = {  # which client drives the system: the Parrot API or plain OpenAI orchestration
    "parrot": "parrot",
    "baseline": "openai",
    "baseline+apc": "openai",
    "baseline-latcap": "openai",
    "vllm": "openai",
}


@dataclass(frozen=True)
class Running:
    name: str
    base_url: str  # .../v1
    model: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s")


def _model_id(base_url: str) -> str:
    return httpx.get(base_url + "/models", timeout=10.0).json()["data"][0]["id"]


@contextlib.contextmanager
def launched(
    cmd: list[str], ready_url: str, log_path: str | None = None, env: dict | None = None
) -> Iterator[subprocess.Popen]:
    """A server process, from the moment `ready_url` answers 200 until the block ends."""
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(ready_url, proc, timeout_s=300)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def serve_command(port: int, serve_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), *serve_args]


@contextlib.contextmanager
def start(name: str, log_path: str | None = None) -> Iterator[Running]:
    port = free_port()
    if name == "vllm":
        if not vllm_peer.available():
            raise RuntimeError("vLLM peer not built: python -m loadtest.vllm_peer setup && export")
        cmd, env, ready = vllm_peer.serve_command(port), vllm_peer.serve_env(), "/health"
    else:
        cmd = serve_command(port, FLAGS[name])
        env, ready = {**os.environ, "PARROT_LOG_LEVEL": "warning"}, "/ready"
    with launched(cmd, f"http://127.0.0.1:{port}{ready}", log_path, env):
        base = f"http://127.0.0.1:{port}/v1"
        yield Running(name, base, _model_id(base))
