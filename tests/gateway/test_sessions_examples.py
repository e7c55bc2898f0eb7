"""The three examples run end to end, unchanged, against a live server on the real model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from core.parrot_fakes import RequestCounter, live_server

from engine.builtin.engine import BuiltinEngine
from engine.builtin.options import EngineOptions
from gateway.app import create_app
from gateway.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(embedded_model) -> Iterator[tuple[str, RequestCounter]]:
    engine = BuiltinEngine(embedded_model, EngineOptions(dtype="float32", num_blocks=1024))
    counter = RequestCounter(create_app(Settings(), engines=[engine]))
    with live_server(counter) as url:
        yield url, counter


def run_example(url: str, name: str) -> str:
    # Short outputs keep the run quick on a CPU; everything else is the example as shipped.
    env = {**os.environ, "PARROT_URL": url, "PARROT_MAX_TOKENS": "12"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_snake_game(server):
    url, counter = server
    before = counter.count("POST", "/v1/sessions/{sid}/calls")
    out = run_example(url, "snake_game.py")
    assert "=== code ===" in out and "=== test ===" in out
    assert counter.count("POST", "/v1/sessions/{sid}/calls") - before == 2


def test_map_reduce_summary(server):
    url, counter = server
    before = counter.count("GET", "/v1/sessions/{sid}/variables/{vid}")
    assert run_example(url, "map_reduce_summary.py").strip()
    assert counter.count("GET", "/v1/sessions/{sid}/variables/{vid}") - before == 1


def test_chain_summary(server):
    url, counter = server
    before = counter.count("GET", "/v1/sessions/{sid}/variables/{vid}")
    assert run_example(url, "chain_summary.py").strip()
    assert counter.count("GET", "/v1/sessions/{sid}/variables/{vid}") - before == 1
