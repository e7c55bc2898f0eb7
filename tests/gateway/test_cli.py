"""The `parrot` command: `serve` as a real process, and `bench NAME` dispatch."""

from __future__ import annotations

import sys
import time
import types

import openai
import pytest
from gateway_support import free_port, spawn

from gateway import cli


def test_serve_prints_a_ready_banner_and_serves() -> None:
    port = free_port()
    proc = spawn(
        "serve", "--echo", "--port", str(port), "--api-key", "sk-test", "--log-level", "warning"
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any("curl" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline().decode())
        banner = "".join(lines)
        base = f"http://127.0.0.1:{port}/v1"
        assert f"Parrot gateway ready at {base}" in banner
        assert "Authorization: Bearer" in banner
        client = openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0)
        reply = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it captured.
    assert proc.returncode in (0, -15)


def test_bench_dispatches_to_loadtest_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    module = types.ModuleType("loadtest.bench_fake")
    module.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "loadtest.bench_fake", module)
    assert cli.main(["bench", "fake", "--quick", "x"]) == 0
    assert seen == [["--quick", "x"]]


def test_unknown_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "no_such_bench"]) == 2
    assert "no benchmark named" in capsys.readouterr().err


def test_usage_errors() -> None:
    with pytest.raises(SystemExit):
        cli.main([])
    with pytest.raises(SystemExit):
        cli.main(["engine"])  # --port is required
