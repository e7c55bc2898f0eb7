"""Two gateway replicas over one real Redis: a session, its variables and their wake-ups
are shared, so any replica can serve any request of a session."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from core.parrot_fakes import CopyFakeEngine, free_port
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


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
