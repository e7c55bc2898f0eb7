"""`SessionTable`: tenant-owned sessions in the state store and their local call graphs.

The store is the authority (any replica may serve a session; a record expires after its
idle TTL); this replica keeps a `SessionGraph` for each session it has seen. A session
that is gone from the store (deleted, expired, or another tenant's) is a 404, and its
local graph is torn down: running calls cancelled, engine contexts freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from gateway.core.config import CoreConfig
from gateway.core.errors import SessionNotFound
from gateway.core.graph import SessionGraph
from gateway.state import SessionRecord, StateStore

log = logging.getLogger(__name__)

Teardown = Callable[[SessionGraph], Awaitable[None]]
SALT = "cache_salt"


class SessionTable:
    def __init__(self, store: StateStore, config: CoreConfig, teardown: Teardown) -> None:
        self._store = store
        self._config = config
        self._teardown = teardown
        self._graphs: dict[str, SessionGraph] = {}
        self._touched: dict[str, float] = {}
        self._ttl: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._graphs)

    def graphs(self) -> list[SessionGraph]:
        return list(self._graphs.values())

    def find(self, session_id: str) -> SessionGraph | None:
        """The local graph, without asking the store (so without any tenant check)."""
        return self._graphs.get(session_id)

    async def create(
        self, tenant: str, idle_ttl_s: float | None, cache_salt: str | None
    ) -> SessionRecord:
        record = SessionRecord(
            session_id=f"sess-{secrets.token_hex(12)}",
            tenant=tenant,
            created_at=time.time(),
            idle_ttl_s=idle_ttl_s or self._config.session_idle_ttl_s,
            metadata={SALT: cache_salt} if cache_salt else {},
        )
        await self._store.put_session(record)
        self._adopt(record)
        return record

    def _adopt(self, record: SessionRecord) -> SessionGraph:
        graph = self._graphs.get(record.session_id)
        if graph is None:
            # A salted session's prefixes are keyed apart from everyone else's.
            salt = record.metadata.get(SALT, "")
            graph = SessionGraph(
                record.session_id,
                record.tenant,
                cache_salt=f"{record.tenant}:{salt}" if salt else "",
            )
            self._graphs[record.session_id] = graph
        graph.created_at, graph.idle_ttl_s = record.created_at, record.idle_ttl_s
        self._touched[record.session_id] = time.monotonic()
        self._ttl[record.session_id] = record.idle_ttl_s
        return graph

    async def get(self, session_id: str, tenant: str) -> SessionGraph:
        """The caller's session (touching it), or SessionNotFound."""
        record = await self._store.get_session(session_id, tenant)
        if record is None:
            graph = self._graphs.get(session_id)
            if graph is not None and graph.tenant == tenant:
                await self._drop(graph)  # expired (or deleted by another replica)
            raise SessionNotFound(session_id)
        return self._adopt(record)

    def touch(self, graph: SessionGraph) -> None:
        """Local activity (a call finished) keeps the session's local state warm."""
        self._touched[graph.session_id] = time.monotonic()

    async def delete(self, session_id: str, tenant: str) -> None:
        if not await self._store.delete_session(session_id, tenant):
            raise SessionNotFound(session_id)
        graph = self._graphs.get(session_id)
        if graph is not None:
            await self._drop(graph)

    async def _drop(self, graph: SessionGraph) -> None:
        if self._graphs.pop(graph.session_id, None) is None:
            return
        self._touched.pop(graph.session_id, None)
        self._ttl.pop(graph.session_id, None)
        await self._teardown(graph)

    # ---- expiry ------------------------------------------------------------------

    def start(self, on_tick: Callable[[], None]) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_loop(on_tick))

    async def _reap_loop(self, on_tick: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self._config.reap_interval_s)
            try:
                on_tick()
                await self.reap()
            except Exception:  # the loop must outlive a flaky store
                log.exception("session reaper failed; retrying")

    async def reap(self) -> None:
        """Tear down sessions idle here past their TTL that the store no longer has.

        `get_session` refreshes a live session's TTL; it is only asked about sessions idle
        on this replica, which another replica must have kept alive if they still exist.
        """
        now = time.monotonic()
        for graph in self.graphs():
            idle = now - self._touched.get(graph.session_id, now)
            if idle < self._ttl.get(graph.session_id, self._config.session_idle_ttl_s):
                continue
            if await self._store.get_session(graph.session_id, graph.tenant) is None:
                await self._drop(graph)
            else:
                self._touched[graph.session_id] = now

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for graph in self.graphs():
            await self._drop(graph)
