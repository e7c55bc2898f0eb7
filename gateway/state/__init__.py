"""Shared gateway state (sessions, variables, engine registry, prefix index, counters)."""

from __future__ import annotations

from gateway.state.base import (
    EngineRecord,
    PrefixMatch,
    SessionRecord,
    StateStore,
    VariableRecord,
)
from gateway.state.memory import MemoryStore


def create_store(redis_url: str | None, *, namespace: str = "parrot") -> StateStore:
    """Redis when a URL is given, else an in-process store."""
    if redis_url:
        from gateway.state.redis_store import RedisStore

        return RedisStore(redis_url, namespace=namespace)
    return MemoryStore()


__all__ = [
    "EngineRecord",
    "MemoryStore",
    "PrefixMatch",
    "SessionRecord",
    "StateStore",
    "VariableRecord",
    "create_store",
]
