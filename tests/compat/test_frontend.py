"""The Python frontend against a live server (uvicorn in a thread, named fake engine):
the seed program, request counts, async use, multi-output functions, errors, settings."""

from __future__ import annotations

import asyncio
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest
from core.parrot_fakes import CopyFakeEngine, RequestCounter, live_server

import compat.frontend as P
from compat.frontend import LATENCY, ParrotError
from gateway.app import create_app
from gateway.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KEY = "frontend-key"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, RequestCounter]]:
    counter = RequestCounter(create_app(Settings(api_keys=(KEY,)), engines=[CopyFakeEngine()]))
    with live_server(counter) as url:
        yield url, counter


@pytest.fixture
def session(server) -> Iterator[P.Session]:
    url, _ = server
    with P.Session(url, api_key=KEY) as s:
        yield s


def counts(counter: RequestCounter) -> tuple[int, int, int]:
    return (
        counter.count("POST", "/v1/sessions/{sid}/calls"),
        counter.count("GET", "/v1/sessions/{sid}/variables/{vid}"),
        counter.count("POST", "/v1/sessions/{sid}/variables"),
    )


def test_the_seed_program_runs_with_one_submit_per_call_and_one_get_per_output(server):
    url, counter = server
    seed = runpy.run_path(str(EXAMPLES / "snake_game.py"))  # not as __main__: just defines
    before = counts(counter)
    with P.Session(url, api_key=KEY):
        code, test = seed["WriteSnakeGame"]()
    assert (code, test) == ("ok", "ok")  # the fake's answer to prompts without '<<..>>'
    calls, gets, creates = (a - b for a, b in zip(counts(counter), before, strict=True))
    assert (calls, gets, creates) == (2, 2, 0)


@P.SemanticFunction(max_tokens=16)
def shout(text: P.SemanticVariable):
    """Shout <<{{input:text}}>>: {{output:loud}}"""


@P.SemanticFunction
def both(a, b):
    """<<{{input:a}}>> first {{output:x}} then <<{{input:b}}>> {{output:y}}"""


def test_values_flow_between_functions_on_the_server(server, session):
    _, counter = server
    before = counts(counter)
    first = shout(P.SemanticVariable("hi"))
    second = shout(first)
    x, y = both(second, "there")
    assert y.get(perf=LATENCY) == "THERE"
    assert x.get() == "HI"
    assert first.get() == "HI"
    calls, gets, _ = (a - b for a, b in zip(counts(counter), before, strict=True))
    assert (calls, gets) == (3, 3)  # second was never awaited: no GET for it
    assert x.get() == "HI"  # a known value is not fetched again
    assert counts(counter)[1] - before[1] == 3


def test_inputs_set_later_and_async_use(server, session):
    later = P.SemanticVariable(name="later")
    out = shout(later)
    later.set("late")

    async def main() -> str:
        result = await shout.acall(out)
        return await result.aget(perf=LATENCY)

    assert asyncio.run(main()) == "LATE"
    assert out.get() == "LATE"


def test_errors_come_back_as_parrot_errors(server, session):
    @P.SemanticFunction
    def broken(x):
        """x {{input:x}} {{output:y}} {{output:y}}"""

    with pytest.raises(ParrotError) as info:
        broken("v")
    assert info.value.status == 400 and info.value.code == "invalid_template"
    with pytest.raises(TypeError):
        shout()  # a missing argument is caught before any request


def test_settings_precedence_and_caps(server, monkeypatch):
    url, _ = server
    monkeypatch.setenv("PARROT_URL", "http://env:1")
    monkeypatch.setenv("PARROT_API_KEY", "nope")
    assert P.Session().url == "http://env:1"
    assert P.Session("http://arg:2").url == "http://arg:2"
    monkeypatch.delenv("PARROT_URL")
    assert P.Session().url == "http://127.0.0.1:8000"
    with P.Session(url) as bad, pytest.raises(ParrotError) as info:
        bad.id  # noqa: B018 - creating the server session needs the (wrong) key
    assert info.value.status == 401
    monkeypatch.setenv("PARROT_MAX_TOKENS", "2")
    with P.Session(url, api_key=KEY):
        assert shout("abcdef").get() == "AB"
