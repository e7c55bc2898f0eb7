"""The engine pool (health, registration through the registry) and the router over it."""

from __future__ import annotations

import msgspec
import pytest

from engine.echo import EchoEngine
from engine.errors import EngineUnavailable
from gateway.errors import ApiError
from gateway.pool.members import EnginePool, HealthPolicy
from gateway.pool.prefix import block_hashes
from gateway.pool.router import Router
from gateway.state import MemoryStore

FAST = HealthPolicy(interval_s=3600, timeout_s=1.0, unhealthy_after=2)


class FlakyEngine(EchoEngine):
    """A fake engine whose health answer the test controls."""

    def __init__(self, engine_id: str, model: str = "echo") -> None:
        super().__init__(engine_id=engine_id, model=model)
        self.up = True

    async def health(self) -> bool:
        if not self.up:
            raise EngineUnavailable("down")
        return True


def refuse(url: str) -> EchoEngine:
    raise AssertionError(f"unexpected connect to {url}")


async def test_health_checks_mark_down_and_up() -> None:
    engine = FlakyEngine("e1")
    pool = EnginePool(MemoryStore(), refuse, FAST)
    member = pool.add(engine)
    await pool.start()
    try:
        assert member.healthy and pool.serving("echo") == [member]
        engine.up = False
        assert not await pool.check(member)
        assert member.healthy  # one failure is tolerated
        await pool.check(member)
        assert not member.healthy and pool.serving("echo") == []
        assert "echo" in pool.models()  # still known: requests get 503, not 404
        engine.up = True
        assert await pool.check(member)
        assert member.healthy
        pool.mark_failed(member, "a request found it unreachable")
        assert pool.serving("echo") == []
    finally:
        await pool.close()


async def test_registry_adoption_across_pools() -> None:
    store = MemoryStore()
    made: list[str] = []

    def connect(url: str) -> EchoEngine:
        made.append(url)
        return EchoEngine(engine_id=url, model="echo")

    first = EnginePool(store, connect, FAST)
    second = EnginePool(store, connect, FAST)
    await first.start()
    await second.start()
    try:
        await first.register("http://engine-a:1/")
        assert [m.member_id for m in first.members] == ["http://engine-a:1"]
        await second._sync_registry()  # what its health loop does every interval
        assert [m.member_id for m in second.members] == ["http://engine-a:1"]
        await second.check(second.members[0])
        assert second.serving("echo")
        assert made == ["http://engine-a:1", "http://engine-a:1"]
    finally:
        await first.close()
        await second.close()


async def test_router_is_prefix_affine_and_records() -> None:
    store = MemoryStore()
    pool = EnginePool(store, refuse, FAST)
    members = [pool.add(FlakyEngine(f"e{i}")) for i in range(3)]
    await pool.start()
    router = Router(pool, store)
    try:
        prompt = block_hashes(list(range(64)), 16, 64)
        member, route = await router.pick("echo", prompt)
        assert route.reason == "least_loaded"
        await router.drain()
        # The chosen engine is now busier than the others, yet holds the prefix.
        member.inflight = 3
        again, route = await router.pick("echo", prompt)
        assert again is member and route.reason == "prefix"
        # Overloaded: the policy moves on to the least-loaded engine.
        member.stats = msgspec.structs.replace(member.stats, num_waiting=50)
        other, route = await router.pick("echo", prompt)
        assert other is not member and route.reason == "least_loaded"
        # Excluding every member leaves nothing: a 503 with Retry-After.
        with pytest.raises(ApiError) as info:
            await router.pick("echo", prompt, exclude={m.member_id for m in members})
        assert info.value.status == 503 and "Retry-After" in info.value.headers
    finally:
        await pool.close()
