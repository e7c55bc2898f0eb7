"""`Router`: picks the engine for one prompt from the pool, the prefix index and the policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass

from gateway.errors import no_engine
from gateway.pool.members import EnginePool, Member
from gateway.pool.routing import Route, RoutingPolicy, choose
from gateway.state import PrefixMatch, StateStore
from gateway.state.base import NO_MATCH

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrefixIndexConfig:
    max_blocks: int = 64  # hash at most this many leading blocks of a prompt
    ttl_s: float = 600.0  # an entry not refreshed for this long is forgotten


class Router:
    def __init__(
        self,
        pool: EnginePool,
        store: StateStore,
        policy: RoutingPolicy = RoutingPolicy(),
        index: PrefixIndexConfig = PrefixIndexConfig(),
        retry_after_s: int = 1,
    ) -> None:
        self._pool = pool
        self._store = store
        self._policy = policy
        self._index = index
        self._retry_after_s = retry_after_s
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def max_blocks(self) -> int:
        return self._index.max_blocks

    async def pick(
        self, model: str, hashes: list[bytes], exclude: Collection[str] = ()
    ) -> tuple[Member, Route]:
        """The member for a prompt with these block hashes; raises a 503 ApiError if none."""
        members = [m for m in self._pool.serving(model) if m.member_id not in exclude]
        if not members:
            raise no_engine(model, self._retry_after_s)
        if len(members) == 1:
            # Affinity only matters with a choice; the index fills once a second engine joins.
            return members[0], Route(members[0].member_id, "least_loaded")
        match = await self._match(model, hashes)
        route = choose(
            [m.load() for m in members],
            match.engine_ids,
            self._policy,
            tie_key=hashes[0] if hashes else b"",
        )
        member = next(m for m in members if m.member_id == route.engine_id)
        if hashes:
            self._record(model, hashes, member.member_id)
        return member, route

    async def _match(self, model: str, hashes: list[bytes]) -> PrefixMatch:
        if not hashes:
            return NO_MATCH
        try:
            return await self._store.match_prefix(model, hashes)
        except Exception as exc:  # a flaky store costs affinity, never the request
            log.warning("prefix lookup failed, routing by load only: %s", exc)
            return NO_MATCH

    def _record(self, model: str, hashes: list[bytes], member_id: str) -> None:
        # Off the request path: the answer does not depend on it, the next request's does.
        task = asyncio.create_task(self._store_record(model, hashes, member_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store_record(self, model: str, hashes: list[bytes], member_id: str) -> None:
        try:
            await self._store.record_prefix(model, hashes, member_id, self._index.ttl_s)
        except Exception as exc:
            log.warning("prefix index update failed: %s", exc)

    async def drain(self) -> None:
        """Wait for pending index updates (shutdown, tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
