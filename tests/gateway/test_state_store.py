"""The StateStore contract, run against both implementations (memory and a real Redis)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from gateway.state import (
    EngineRecord,
    MemoryStore,
    SessionRecord,
    StateStore,
    VariableRecord,
)
from gateway.state.redis_store import RedisStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        made: StateStore = MemoryStore()
    else:
        url = request.getfixturevalue("redis_url")
        # A fresh namespace per test: no flushing, no interference.
        made = RedisStore(url, namespace=f"test-{secrets.token_hex(4)}")
    await made.start()
    yield made
    await made.close()


def session(session_id: str = "s1", tenant: str = "alice", ttl: float = 60.0) -> SessionRecord:
    return SessionRecord(
        session_id=session_id, tenant=tenant, created_at=time.time(), idle_ttl_s=ttl
    )


async def test_is_a_state_store(store: StateStore) -> None:
    assert isinstance(store, StateStore)
    assert await store.ping()


async def test_sessions_are_tenant_owned(store: StateStore) -> None:
    await store.put_session(session())
    record = await store.get_session("s1", "alice")
    assert record is not None and record.tenant == "alice"
    assert await store.get_session("s1", "bob") is None
    assert not await store.delete_session("s1", "bob")
    assert await store.delete_session("s1", "alice")
    assert await store.get_session("s1", "alice") is None
    assert not await store.delete_session("s1", "alice")


async def test_sessions_expire_when_idle_and_touch_refreshes(store: StateStore) -> None:
    await store.put_session(session(ttl=0.3))
    await asyncio.sleep(0.2)
    assert await store.get_session("s1", "alice") is not None  # refreshes the TTL
    await asyncio.sleep(0.2)
    assert await store.get_session("s1", "alice") is not None
    await asyncio.sleep(0.4)
    assert await store.get_session("s1", "alice") is None


async def test_variables_live_in_their_session(store: StateStore) -> None:
    var = VariableRecord(session_id="s1", variable_id="v1", name="answer")
    assert not await store.put_variable(var)  # no session yet
    await store.put_session(session())
    assert await store.put_variable(var)
    got = await store.get_variable("s1", "v1")
    assert got is not None and got.status == "pending" and not got.done
    ready = VariableRecord(session_id="s1", variable_id="v1", status="ready", value="42")
    await store.put_variable(ready)
    got = await store.get_variable("s1", "v1")
    assert got is not None and got.value == "42" and got.done
    await store.put_variable(VariableRecord(session_id="s1", variable_id="v2"))
    assert sorted(v.variable_id for v in await store.list_variables("s1")) == ["v1", "v2"]
    assert await store.delete_session("s1", "alice")
    assert await store.get_variable("s1", "v1") is None
    assert await store.list_variables("s1") == []


async def test_wait_variable(store: StateStore) -> None:
    await store.put_session(session())
    assert await store.wait_variable("s1", "missing", 0.05) is None
    await store.put_variable(VariableRecord(session_id="s1", variable_id="v"))
    pending = await store.wait_variable("s1", "v", 0.05)
    assert pending is not None and pending.status == "pending"

    async def produce() -> None:
        await asyncio.sleep(0.05)
        await store.put_variable(VariableRecord(session_id="s1", variable_id="v", name="x"))
        await asyncio.sleep(0.05)
        done = VariableRecord(session_id="s1", variable_id="v", status="ready", value="ok")
        await store.put_variable(done)

    started = time.monotonic()
    waiters = [store.wait_variable("s1", "v", 5.0) for _ in range(3)]
    results = await asyncio.gather(produce(), *waiters)
    assert all(r is not None and r.value == "ok" for r in results[1:])
    assert time.monotonic() - started < 2.0
    failed = VariableRecord(session_id="s1", variable_id="f", status="failed", error="boom")
    await store.put_variable(failed)
    got = await store.wait_variable("s1", "f", 1.0)
    assert got is not None and got.error == "boom"


async def test_wait_across_replicas(redis_url: str) -> None:
    """A variable set through one replica's store wakes a waiter on another's."""
    namespace = f"test-{secrets.token_hex(4)}"
    first, second = (
        RedisStore(redis_url, namespace=namespace),
        RedisStore(redis_url, namespace=namespace),
    )
    await first.start()
    await second.start()
    try:
        await first.put_session(session())
        await first.put_variable(VariableRecord(session_id="s1", variable_id="v"))
        waiter = asyncio.create_task(second.wait_variable("s1", "v", 5.0))
        await asyncio.sleep(0.05)
        done = VariableRecord(session_id="s1", variable_id="v", status="ready", value="hi")
        await first.put_variable(done)
        got = await asyncio.wait_for(waiter, 2.0)
        assert got is not None and got.value == "hi"
    finally:
        await first.close()
        await second.close()


async def test_engine_registry(store: StateStore) -> None:
    now = time.time()
    await store.put_engine(EngineRecord(engine_id="a", url="http://a", model="m", last_seen=now))
    await store.put_engine(EngineRecord(engine_id="b", url=None, model="m", last_seen=now - 100))
    assert {r.engine_id for r in await store.list_engines()} == {"a", "b"}
    assert [r.engine_id for r in await store.list_engines(max_age_s=10)] == ["a"]
    await store.delete_engine("a")
    assert [r.engine_id for r in await store.list_engines()] == ["b"]


async def test_prefix_index(store: StateStore) -> None:
    hashes = [bytes([i]) * 8 for i in range(4)]
    empty = await store.match_prefix("m", hashes)
    assert empty.num_blocks == 0 and empty.engine_ids == ()
    await store.record_prefix("m", hashes[:3], "e1", 60.0)
    await store.record_prefix("m", hashes[:1], "e2", 60.0)
    match = await store.match_prefix("m", hashes)
    assert match.num_blocks == 3 and match.engine_ids == ("e1",)
    match = await store.match_prefix("m", hashes[:1])
    assert match.num_blocks == 1 and set(match.engine_ids) == {"e1", "e2"}
    assert (await store.match_prefix("other-model", hashes)).num_blocks == 0
    # A chained index: a gap ends the match even if later blocks are known.
    assert (await store.match_prefix("m", [b"x" * 8, *hashes])).num_blocks == 0


async def test_prefix_entries_expire(store: StateStore) -> None:
    hashes = [b"a" * 8, b"b" * 8]
    await store.record_prefix("m", hashes, "e1", 0.2)
    assert (await store.match_prefix("m", hashes)).num_blocks == 2
    await asyncio.sleep(0.3)
    assert (await store.match_prefix("m", hashes)).num_blocks == 0


async def test_counters(store: StateStore) -> None:
    assert [await store.incr("k", 0.3) for _ in range(3)] == [1, 2, 3]
    assert await store.incr("other", 0.3) == 1
    await asyncio.sleep(0.4)
    assert await store.incr("k", 0.3) == 1


def test_memory_prefix_index_is_bounded() -> None:
    store = MemoryStore(max_prefix_entries=10)

    async def run() -> int:
        for i in range(50):
            await store.record_prefix("m", [i.to_bytes(8, "big")], "e", 60.0)
        return (await store.match_prefix("m", [(49).to_bytes(8, "big")])).num_blocks

    assert asyncio.run(run()) == 1
    assert len(store._prefixes) == 10
