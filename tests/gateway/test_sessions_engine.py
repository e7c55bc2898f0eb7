"""The semantic-variable HTTP API on the builtin engine (tiny random weights): ending a
session frees its blocks; OpenAI requests joining a session fork its cached prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from engine.builtin.engine import BuiltinEngine
from engine.builtin.options import EngineOptions
from gateway.app import create_app
from gateway.settings import Settings


async def new_session(c: AsyncTestClient) -> str:
    r = await c.post("/v1/sessions")
    assert r.status_code == 200, r.text
    return r.json()["id"]


def assert_error(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


SYSTEM = "You are a concise assistant for a hardware store; answer in a few words. " * 4


@pytest.fixture
async def tiny_client(tiny_model) -> AsyncIterator[AsyncTestClient]:
    engine = BuiltinEngine(tiny_model, EngineOptions(dtype="float32", num_blocks=256))
    async with AsyncTestClient(create_app(Settings(), engines=[engine])) as c:
        c.engine = engine
        yield c


async def test_delete_frees_every_block_of_the_session(tiny_client) -> None:
    c, model = tiny_client, tiny_client.engine.info.model
    sid = await new_session(c)
    for q in ("hammer?", "nails?"):
        r = await c.post(
            f"/v1/sessions/{sid}/calls",
            json={
                "model": model,
                "template": SYSTEM + q + " {{output:a}}",
                "outputs": {"a": {"max_tokens": 6, "temperature": 0}},
            },
        )
        out = r.json()["outputs"]["a"]
    # One call still runs when the session ends: it is aborted and freed too.
    r = await c.post(
        f"/v1/sessions/{sid}/calls",
        json={
            "model": model,
            "template": "Count: {{output:a}}",
            "outputs": {"a": {"max_tokens": 400, "ignore_eos": True}},
        },
    )
    await c.get(f"/v1/sessions/{sid}/variables/{out}")
    core = c.app.state.services.core
    assert (await c.engine.stats()).used_blocks > 0
    assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 200
    prefixes = core.contexts.prefixes()
    stats = await c.engine.stats()
    bs = c.engine.info.block_size
    # Only the shared prefixes (idle now, evicted LRU later) stay: they are not the session's.
    # Two prefixes may share their leading blocks (the second fill can hit the engine's block
    # cache, or not, depending on timing), so their blocks are an upper bound...
    assert 0 < stats.used_blocks <= sum(-(-len(p.token_ids) // bs) for p in prefixes)
    assert stats.num_contexts == len(prefixes) and all(p.refs == 0 for p in prefixes)
    # ...and at least one prefix's worth of blocks stays, all of them idle prefix blocks.
    assert stats.used_blocks >= max(-(-len(p.token_ids) // bs) for p in prefixes)


async def test_openai_requests_join_a_session_and_share_its_prefix(tiny_client) -> None:
    c, model = tiny_client, tiny_client.engine.info.model
    sid = await new_session(c)
    r = await c.post(
        f"/v1/sessions/{sid}/calls",
        json={
            "model": model,
            "template": SYSTEM + "Q: {{input:q}} A: {{output:a}}",
            "inputs": {"q": {"value": "glue?"}},
            "outputs": {"a": {"max_tokens": 4}},
        },
    )
    await c.get(f"/v1/sessions/{sid}/variables/{r.json()['outputs']['a']}")
    (prefix,) = c.app.state.services.core.contexts.prefixes()
    refs = prefix.refs  # the session's retained call context is a child of the prefix
    payload = {
        "model": model,
        "prompt": SYSTEM + "Q: tape? A:",
        "max_tokens": 4,
        "parrot": {"session_id": sid},
    }
    r = await c.post("/v1/completions", json=payload)
    assert r.status_code == 200, r.text
    cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= len(prefix.token_ids)
    assert prefix.refs == refs  # the request handed its lease back
    r = await c.post("/v1/completions", json={**payload, "parrot": {"session_id": "sess-x"}})
    assert_error(r, 404, "session_not_found")
