"""Two gateway replicas over one real Redis (the `redis_url` fixture of this folder): a
session, its variables and their wake-ups are shared, so any replica serves any request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from core.parrot_fakes import CopyFakeEngine
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.settings import Settings


@pytest.fixture
async def replicas(redis_url) -> AsyncIterator[tuple[AsyncTestClient, AsyncTestClient]]:
    settings = Settings(redis_url=redis_url)
    one = create_app(settings, engines=[CopyFakeEngine("fake-a")])
    two = create_app(settings, engines=[CopyFakeEngine("fake-b")])
    async with AsyncTestClient(one) as a, AsyncTestClient(two) as b:
        yield a, b


async def test_a_session_is_served_by_any_replica(replicas) -> None:
    a, b = replicas
    sid = (await a.post("/v1/sessions")).json()["id"]
    slot = (await b.post(f"/v1/sessions/{sid}/variables", json={"name": "in"})).json()["id"]
    call = {
        "model": "fake",
        "template": "<<{{input:x}}>> {{output:y}}",
        "inputs": {"x": {"var": slot}},
    }
    out = (await a.post(f"/v1/sessions/{sid}/calls", json=call)).json()["outputs"]["y"]
    # Replica B sets the input replica A's call waits on, then waits for A's output.
    r = await b.put(f"/v1/sessions/{sid}/variables/{slot}", json={"value": "cross"})
    assert r.status_code == 200, r.text
    r = await b.get(f"/v1/sessions/{sid}/variables/{out}?timeout=10")
    assert r.json() == {"id": out, "name": "y", "ready": True, "status": "ready", "value": "CROSS"}
    # A's output is a produced variable on every replica.
    assert (
        await b.put(f"/v1/sessions/{sid}/variables/{out}", json={"value": "x"})
    ).status_code == 409
    assert (await b.delete(f"/v1/sessions/{sid}")).status_code == 200
    assert (await a.get(f"/v1/sessions/{sid}/variables/{out}")).status_code == 404
