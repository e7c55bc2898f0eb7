"""`Entry`: one cached engine context (a shared prefix or a retained call context).

An entry's `refs` counts what keeps it alive on its engine: running calls forked from it
and child entries (a retained context forked from a prefix holds one ref on it):

    prefix px  refs=2 ──> retained call A (refs=0, idle)
               └────────> running call C's context (not an entry)

Only entries with refs == 0 are idle, and idle entries have no live children.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from hashlib import blake2b

from engine.protocol import Scheduling
from gateway.pool.members import Member


def prefix_key(model: str, salt: str, text: str) -> bytes:
    data = "\0".join((model, salt, text)).encode()
    return blake2b(data, digest_size=16).digest()


@dataclass(slots=True, eq=False)
class Entry:
    member: Member
    context_id: str
    token_ids: list[int]
    key: bytes | None = None  # prefix entries only
    session_id: str | None = None  # retained entries only
    parent: Entry | None = None
    refs: int = 0
    ready: asyncio.Future[None] | None = None
    fill_scheduling: Scheduling | None = None  # prefix entries: what the fill runs as
    last_used: float = field(default_factory=time.monotonic)
    evicted: bool = False

    @property
    def num_blocks(self) -> int:
        size = self.member.info.block_size if self.member.info else 16
        inherited = len(self.parent.token_ids) // size if self.parent else 0
        return -(-len(self.token_ids) // size) - inherited
