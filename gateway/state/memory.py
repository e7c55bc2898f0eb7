"""`MemoryStore`: the state store inside one gateway process (the default without `--redis`)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.state.base import (
    NO_MATCH,
    EngineRecord,
    PrefixMatch,
    SessionRecord,
    VariableRecord,
)

Key = tuple[str, str]


class MemoryStore:
    """Dicts with lazy expiry. The prefix index is an LRU capped at `max_prefix_entries`."""

    def __init__(
        self, *, max_prefix_entries: int = 200_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._sessions: dict[str, tuple[SessionRecord, float]] = {}  # -> expires_at
        self._variables: dict[str, dict[str, VariableRecord]] = {}
        self._waiters: dict[Key, set[asyncio.Future[None]]] = {}
        self._engines: dict[str, EngineRecord] = {}
        self._prefixes: OrderedDict[tuple[str, bytes], dict[str, float]] = OrderedDict()
        self._max_prefix_entries = max_prefix_entries
        self._counters: dict[str, tuple[int, float]] = {}
        self._swept_size = 64

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                future.cancel()
        self._waiters.clear()

    async def ping(self) -> bool:
        return True

    # sessions
    def _live_session(self, session_id: str) -> SessionRecord | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        record, expires_at = entry
        if expires_at <= self._clock():
            del self._sessions[session_id]
            self._variables.pop(session_id, None)
            return None
        return record

    async def put_session(self, record: SessionRecord) -> None:
        self._sweep_sessions()
        self._sessions[record.session_id] = (record, self._clock() + record.idle_ttl_s)

    async def get_session(self, session_id: str, tenant: str) -> SessionRecord | None:
        record = self._live_session(session_id)
        if record is None or record.tenant != tenant:
            return None
        self._sessions[session_id] = (record, self._clock() + record.idle_ttl_s)
        return record

    async def delete_session(self, session_id: str, tenant: str) -> bool:
        record = self._live_session(session_id)
        if record is None or record.tenant != tenant:
            return False
        del self._sessions[session_id]
        self._variables.pop(session_id, None)
        return True

    def _sweep_sessions(self) -> None:
        # Amortised: a full sweep only once the table has doubled since the last one.
        if len(self._sessions) < 2 * self._swept_size:
            return
        now = self._clock()
        for session_id in [s for s, (_, exp) in self._sessions.items() if exp <= now]:
            del self._sessions[session_id]
            self._variables.pop(session_id, None)
        self._swept_size = max(64, len(self._sessions))

    # variables
    async def put_variable(self, record: VariableRecord) -> bool:
        if self._live_session(record.session_id) is None:
            return False
        self._variables.setdefault(record.session_id, {})[record.variable_id] = record
        if record.done:
            for future in self._waiters.pop((record.session_id, record.variable_id), ()):
                if not future.done():
                    future.set_result(None)
        return True

    async def get_variable(self, session_id: str, variable_id: str) -> VariableRecord | None:
        if self._live_session(session_id) is None:
            return None
        return self._variables.get(session_id, {}).get(variable_id)

    async def list_variables(self, session_id: str) -> list[VariableRecord]:
        if self._live_session(session_id) is None:
            return []
        return list(self._variables.get(session_id, {}).values())

    async def wait_variable(
        self, session_id: str, variable_id: str, timeout_s: float
    ) -> VariableRecord | None:
        record = await self.get_variable(session_id, variable_id)
        if record is None or record.done:
            return record
        key = (session_id, variable_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(future)
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[key]
        return await self.get_variable(session_id, variable_id)

    # engine registry
    async def put_engine(self, record: EngineRecord) -> None:
        self._engines[record.engine_id] = record

    async def list_engines(self, max_age_s: float | None = None) -> list[EngineRecord]:
        records = list(self._engines.values())
        if max_age_s is None:
            return records
        oldest = self._clock() - max_age_s
        return [r for r in records if r.last_seen >= oldest]

    async def delete_engine(self, engine_id: str) -> None:
        self._engines.pop(engine_id, None)

    # prefix index
    async def record_prefix(
        self, model: str, block_hashes: list[bytes], engine_id: str, ttl_s: float
    ) -> None:
        expires_at = self._clock() + ttl_s
        prefixes = self._prefixes
        for block_hash in block_hashes:
            key = (model, block_hash)
            holders = prefixes.get(key)
            if holders is None:
                prefixes[key] = {engine_id: expires_at}
            else:
                holders[engine_id] = expires_at
                prefixes.move_to_end(key)
        while len(prefixes) > self._max_prefix_entries:
            prefixes.popitem(last=False)

    async def match_prefix(self, model: str, block_hashes: list[bytes]) -> PrefixMatch:
        now = self._clock()
        best = NO_MATCH
        # Hashes are chained, so the first block nobody holds ends every longer match.
        for i, block_hash in enumerate(block_hashes):
            holders = self._prefixes.get((model, block_hash))
            live = tuple(e for e, exp in holders.items() if exp > now) if holders else ()
            if not live:
                break
            best = PrefixMatch(i + 1, live)
        return best

    # counters
    async def incr(self, key: str, ttl_s: float) -> int:
        now = self._clock()
        count, expires_at = self._counters.get(key, (0, 0.0))
        if expires_at <= now:
            if len(self._counters) > 10_000:
                self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
            count, expires_at = 0, now + ttl_s
        self._counters[key] = (count + 1, expires_at)
        return count + 1
