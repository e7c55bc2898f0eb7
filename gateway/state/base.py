"""The `StateStore` protocol and its records: everything gateway replicas share.

Two real implementations: `MemoryStore` (one process) and `RedisStore` (replicas over one
Redis). Records are msgspec Structs so that Redis can hold them as msgpack.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import msgspec

VariableStatus = Literal["pending", "ready", "failed"]


class SessionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant-owned session; it expires after `idle_ttl_s` without a touch."""

    session_id: str
    tenant: str
    created_at: float
    idle_ttl_s: float
    metadata: dict[str, str] = {}


class VariableRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A named value inside a session (a semantic variable): pending until set or failed."""

    session_id: str
    variable_id: str
    name: str = ""
    status: VariableStatus = "pending"
    value: str | None = None
    error: str | None = None
    updated_at: float = 0.0
    # semantic variables: the failure's HTTP status and code, and the producing call
    error_status: int | None = None
    error_code: str | None = None
    producer: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "pending"


class EngineRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One engine as the replicas see it: where it is, what it serves, and how it answered."""

    engine_id: str
    url: str | None  # None: in-process in some replica, not reachable by the others
    model: str = ""
    healthy: bool = True
    last_seen: float = 0.0


class PrefixMatch(msgspec.Struct, frozen=True):
    """The longest indexed leading run of blocks: its length and the engines that hold it."""

    num_blocks: int
    engine_ids: tuple[str, ...]


NO_MATCH = PrefixMatch(0, ())


@runtime_checkable
class StateStore(Protocol):
    """Shared gateway state. Every method is safe to call from concurrent requests."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    # sessions: tenant-owned, idle expiry; `get_session` refreshes the expiry
    async def put_session(self, record: SessionRecord) -> None: ...

    async def get_session(self, session_id: str, tenant: str) -> SessionRecord | None: ...

    async def delete_session(self, session_id: str, tenant: str) -> bool:
        """Remove the session and all its variables; False if it was not there (or not theirs)."""

    # variables: live as long as their session
    async def put_variable(self, record: VariableRecord) -> bool:
        """Create or replace; False if the session is gone. A done record wakes every
        replica's waiters."""

    async def get_variable(self, session_id: str, variable_id: str) -> VariableRecord | None: ...

    async def list_variables(self, session_id: str) -> list[VariableRecord]: ...

    async def wait_variable(
        self, session_id: str, variable_id: str, timeout_s: float
    ) -> VariableRecord | None:
        """The record once it is done; the pending record at timeout; None if it doesn't exist."""

    # engine registry
    async def put_engine(self, record: EngineRecord) -> None: ...

    async def list_engines(self, max_age_s: float | None = None) -> list[EngineRecord]: ...

    async def delete_engine(self, engine_id: str) -> None: ...

    # prefix index: chained block hashes -> engines holding that prefix
    async def record_prefix(
        self, model: str, block_hashes: list[bytes], engine_id: str, ttl_s: float
    ) -> None: ...

    async def match_prefix(self, model: str, block_hashes: list[bytes]) -> PrefixMatch: ...

    # counters
    async def incr(self, key: str, ttl_s: float) -> int:
        """Add one to `key` and return it; the key starts over `ttl_s` after its first incr."""
