"""`parrot loadtest`: locust users against an echo-backed gateway, end to end (~30 s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cli
from loadtest.soak import parse_duration, started_server

FAST = ["--users", "3", "--spawn-rate", "3", "--sample-every", "5"]


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    log = tmp_path_factory.mktemp("echo") / "server.log"
    with started_server(["--echo"], log) as (root, pid):
        yield root, pid


def test_durations() -> None:
    assert parse_duration("90") == parse_duration("90s") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400


def test_loadtest_starts_a_server_and_reports_zero_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lt.json"
    argv = ["loadtest", "--echo", *FAST, "--duration", "15s", "--settle", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "requests served:" in printed and "errors: 0" in printed

    report = json.loads(out.read_text())
    assert report["ok"] and report["errors"] == 0 and report["requests"] > 0
    assert report["failures"] == [] and report["exceptions"] == []
    names = {e["name"] for e in report["entries"]}
    assert {"/v1/chat/completions", "chat TTFT", "chat e2e", "app e2e"} <= names
    assert {"/v1/sessions", "/v1/sessions/[sid]/graph", "/v1/sessions/[sid]"} <= names
    for entry in report["entries"]:
        assert entry["requests"] > 0 and entry["failures"] == 0
        assert entry["p50_ms"] is not None and entry["p99_ms"] >= entry["p50_ms"]
    server = report["server"]
    for stage in ("start", "end", "after"):
        assert server[stage]["rss_mib"] > 0
        assert server[stage]["in_flight"] == 0 or stage == "end"
        assert "kv_used" in server[stage]  # None: the echo engine has no paged KV cache
    assert server["end"]["t_s"] < server["after"]["t_s"]
    assert len(server["series"]) >= 4


def test_loadtest_fails_when_requests_error(
    echo_server: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, pid = echo_server
    out = tmp_path / "bad.json"
    argv = ["loadtest", "--host", f"{root}/v1", "--server-pid", str(pid), "--model", "no-such"]
    argv += [*FAST, "--duration", "3s", "--settle", "0", "--out", str(out)]
    assert cli.main(argv) == 1
    assert "FAILED" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert not report["ok"] and report["errors"] > 0
    assert any("404" in f["error"] for f in report["failures"])
    assert report["server"]["start"]["rss_mib"] > 0
