"""`Entry`: one cached engine context (a shared prefix, a session prefix or a retained call
context).

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
from gateway.core.graph import Call, SessionGraph, Variable
from gateway.core.template import Input, Text
from gateway.pool.members import Member


def prefix_key(model: str, salt: str, text: str) -> bytes:
    data = "\0".join((model, salt, text)).encode()
    return blake2b(data, digest_size=16).digest()


RunPiece = tuple[str, str]  # ("text", template text) or ("var", variable id)


def shared_run(call: Call) -> tuple[RunPiece, ...] | None:
    """The call's leading template text and semantic variables, up to its first literal
    input or output, when a variable is among them: sibling calls with the same run (every
    programmer prompt starting with the brief and the architect's design) share its KV, as
    the paper's prefix cache mapped a sequence of leading variables to one context.
    Computed once per call (segments and bindings never change): placement asks for every
    queued call's siblings on every drain."""
    if call.run_known:
        return call.run
    run: list[RunPiece] = []
    for segment in call.segments:
        bound = call.inputs[segment.name] if isinstance(segment, Input) else None
        if isinstance(segment, Text):
            run.append(("text", segment.text))
        elif isinstance(bound, Variable):
            run.append(("var", bound.var_id))
        else:
            break
    call.run = tuple(run) if any(kind == "var" for kind, _ in run) else None
    call.run_known = True
    return call.run


def sibling_run(call: Call) -> tuple[RunPiece, ...] | None:
    """`shared_run(call)`, when another live call of the session has the same run (only
    then is the run worth a context of its own)."""
    run = shared_run(call)
    if run is None:
        return None
    others = (c for c in call.session.calls.values() if c is not call)
    return run if any(shared_run(other) == run for other in others) else None


def session_prefix_key(
    model: str, session: SessionGraph, chat: bool, run: tuple[RunPiece, ...]
) -> bytes:
    """A session's leading run of text and variables (variables are immutable once set, so
    their ids stand for their values); length-prefixed so no two runs collide."""
    parts = [f"{kind}{len(value)}:{value}" for kind, value in run]
    text = "\0".join((session.session_id, "chat" if chat else "", *parts))
    return prefix_key(model, session.cache_salt, text)


@dataclass(slots=True, eq=False)
class Entry:
    member: Member
    context_id: str
    token_ids: list[int]
    key: bytes | None = None  # prefix entries only
    session_id: str | None = None  # retained entries and session prefixes
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
