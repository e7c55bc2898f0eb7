"""Fixtures: a live gateway over EchoEngine, and a throwaway redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from gateway_support import Live, free_port, serve, settings_for_tests

from gateway.app import create_app


@pytest.fixture(scope="session")
def echo_gateway() -> Iterator[Live]:
    """The shared gateway for protocol tests: EchoEngine, no auth, in-memory state."""
    live = serve(create_app(settings_for_tests()))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server on a free port, no persistence (skipped when it is not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)
