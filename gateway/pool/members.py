"""`EnginePool`: the engines a gateway routes to, their health, load and registration.

Engines come from three places: in-process instances, `--engine-url`s, and registrations
(`POST /admin/engines`, possibly received by another replica, found through the state
store's engine registry). A background loop checks every engine each `interval_s`: an engine
is marked down after `unhealthy_after` failed checks, or at once when a request finds it
unreachable, and is marked up again as soon as it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.client import EngineClient
from engine.errors import EngineError
from engine.protocol import EngineInfo, EngineStats
from gateway.pool.routing import Load
from gateway.state import EngineRecord, StateStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Member:
    """One engine in the pool. `member_id` is its URL when remote, so replicas agree on it."""

    member_id: str
    engine: EngineClient
    url: str | None = None
    info: EngineInfo | None = None
    healthy: bool = False
    failures: int = 0
    inflight: int = 0  # this replica's requests on it right now
    stats: EngineStats | None = None

    def load(self) -> Load:
        stats = self.stats
        if stats is None:
            return Load(self.member_id, running=self.inflight)
        free_kv = stats.free_blocks / stats.total_blocks if stats.total_blocks else 1.0
        # Stats lag by up to one health interval, this replica's own count does not: busy is
        # max(running + waiting, inflight).
        running = max(stats.num_running, self.inflight - stats.num_waiting)
        return Load(self.member_id, running=running, waiting=stats.num_waiting, free_kv=free_kv)


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    interval_s: float = 2.0
    timeout_s: float = 2.0
    unhealthy_after: int = 2


class EnginePool:
    def __init__(
        self,
        store: StateStore,
        connect: Callable[[str], EngineClient],
        health: HealthPolicy = HealthPolicy(),
    ) -> None:
        self._store = store
        self._connect = connect  # url -> a RemoteEngine (injected so tests can fake it)
        self._health = health
        self._members: dict[str, Member] = {}
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def members(self) -> list[Member]:
        return list(self._members.values())

    def get(self, member_id: str) -> Member | None:
        return self._members.get(member_id)

    def add(self, engine: EngineClient, url: str | None = None) -> Member:
        member_id = url or engine.info.engine_id
        if member_id in self._members:
            raise ValueError(f"engine '{member_id}' is already in the pool")
        member = Member(member_id, engine, url=url, info=None if url else engine.info)
        self._members[member_id] = member
        return member

    def add_url(self, url: str) -> Member:
        url = url.rstrip("/")
        return self._members.get(url) or self.add(self._connect(url), url=url)

    def serving(self, model: str) -> list[Member]:
        """Healthy members serving `model`."""
        return [
            m
            for m in self._members.values()
            if m.healthy and m.info is not None and m.info.model == model
        ]

    def models(self) -> dict[str, EngineInfo]:
        """Every model some member has ever reported, healthy or not."""
        found: dict[str, EngineInfo] = {}
        for member in self._members.values():
            if member.info is not None:
                found.setdefault(member.info.model, member.info)
        return found

    def mark_failed(self, member: Member, reason: str) -> None:
        if member.healthy:
            log.warning("engine %s marked down: %s", member.member_id, reason)
        member.healthy = False
        member.failures = max(member.failures, self._health.unhealthy_after)

    async def register(self, url: str) -> Member:
        """Add an engine by URL, check it now, and tell the other replicas."""
        member = self.add_url(url)
        await self.check(member)
        await self._publish([member])
        return member

    async def start(self) -> None:
        await self._sync_registry()
        await asyncio.gather(*(self.check(m) for m in self.members))
        await self._publish(self.members)
        self._loop_task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for member in self.members:
            with contextlib.suppress(Exception):
                await member.engine.close()

    async def check(self, member: Member) -> bool:
        """One health check: (re)connect if needed, ask health and stats."""
        try:
            async with asyncio.timeout(self._health.timeout_s):
                if member.info is None:
                    await member.engine.start()
                    member.info = member.engine.info
                ok = await member.engine.health()
                if ok:
                    member.stats = await member.engine.stats()
        except (EngineError, OSError, TimeoutError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        else:
            reason = "health check answered not ok"
        if ok:
            if not member.healthy:
                log.info("engine %s is up", member.member_id)
            member.healthy, member.failures = True, 0
        else:
            member.failures += 1
            if member.failures >= self._health.unhealthy_after or member.info is None:
                self.mark_failed(member, reason)
        return ok

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._health.interval_s)
            try:
                await self._sync_registry()
                await asyncio.gather(*(self.check(m) for m in self.members))
                await self._publish(self.members)
            except Exception:  # the loop must outlive a flaky store
                log.exception("engine health loop failed; retrying")

    async def _sync_registry(self) -> None:
        """Adopt engines that registered through another replica."""
        max_age = max(30.0, 10 * self._health.interval_s)
        for record in await self._store.list_engines(max_age_s=max_age):
            if record.url and record.url not in self._members:
                log.info("adopting engine %s from the registry", record.url)
                self.add_url(record.url)

    async def _publish(self, members: list[Member]) -> None:
        now = time.time()
        # Only healthy engines are announced: a dead one's record ages out of the registry
        # instead of replicas overwriting each other's verdicts.
        for member in members:
            if not member.healthy or member.info is None:
                continue
            record = EngineRecord(
                engine_id=member.member_id,
                url=member.url,
                model=member.info.model,
                healthy=True,
                last_seen=now,
            )
            await self._store.put_engine(record)
