"""`ContextManager`: shared prefix contexts, session prefixes (leading variables) and
retained call contexts on engines.

Three kinds of cached contexts, all ref-counted and all evicted LRU once idle:

- prefix contexts: the constant leading text of a template, keyed by a content hash of
  (model, cache salt, text), shared by every call, session and tenant using that text
  (a tenant with a salt shares only with itself). Filled once: concurrent calls that
  need the same prefix await the one fill.
- session prefixes: a prefix context extended by the session's leading variables (the
  brief, then an architect's design that every programmer prompt starts with), filled once
  as a fork of the constant prefix when sibling calls share that run; kept with the session.
- retained contexts: a finished call's whole context (prompt + generated text), kept for
  its session; a later call whose prompt starts with exactly those tokens forks it.

    px (system prompt) ──fork──> call A ctx ──retained──> fork by call B (prompt ⊇ A's)
                       ├─fork──> call C ctx
                       └─fork──> px + design (session) ──fork──> programmer 1..N ctx

An entry's `refs` counts what keeps it alive on the engine: running calls forked from it
and child entries. Only entries with refs == 0 are idle, and idle entries have no live
children, so evicting them in any order is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from engine.errors import EngineError
from engine.protocol import FillRequest, RescheduleRequest, Scheduling, outranks
from gateway.core.config import CoreConfig
from gateway.core.entries import Entry
from gateway.pool.members import Member

log = logging.getLogger(__name__)


class ContextManager:
    def __init__(self, config: CoreConfig, replica_id: str) -> None:
        self._config = config
        self._replica = replica_id
        self._prefixes: dict[tuple[str, bytes], Entry] = {}
        self._retained: dict[str, list[Entry]] = {}
        self._idle: OrderedDict[int, Entry] = OrderedDict()  # id(entry) -> entry, LRU first
        self._counter = 0
        self._pending: set[asyncio.Task[None]] = set()

    # ---- what the scheduler sees ---------------------------------------------------

    def keys_on(self, member_id: str) -> set[bytes]:
        return {key for (mid, key), e in self._prefixes.items() if mid == member_id}

    def held_by(self, session_id: str) -> list[Entry]:
        return list(self._retained.get(session_id, ()))

    def prefixes(self) -> list[Entry]:
        return list(self._prefixes.values())

    # ---- leases ----------------------------------------------------------------------

    def match(
        self, session_id: str, keys: set[bytes], model: str, prompt: list[int]
    ) -> Entry | None:
        """For a plain request joining a session: the longest ready context of the session
        (retained, or a prefix it used) on a healthy engine of `model` that starts the
        prompt; acquired."""
        candidates = [*self._retained.get(session_id, ())]
        candidates += [e for (_, key), e in self._prefixes.items() if key in keys]
        best: Entry | None = None
        for entry in candidates:
            member, n = entry.member, len(entry.token_ids)
            ready = entry.ready  # never cancelled: a failed fill sets an exception
            if entry.evicted or (
                ready is not None and not (ready.done() and not ready.exception())
            ):
                continue
            if not member.healthy or member.info is None or member.info.model != model:
                continue
            if n > len(prompt) or (best is not None and n <= len(best.token_ids)):
                continue
            if prompt[:n] == entry.token_ids:
                best = entry
        if best is not None:
            self._acquire(best)
        return best

    async def lease(
        self,
        member: Member,
        key: bytes | None,
        prefix: list[int],
        session_id: str,
        prompt: list[int],
        scheduling: Scheduling,
        session_prefix: tuple[bytes, list[int]] | None = None,
    ) -> Entry | None:
        """The longest cached context this prompt may fork on `member` (acquired), or None.

        `session_prefix` (key, tokens) extends `prefix` with the session's own leading
        variables (e.g. an architect's design that every programmer prompt starts with): it
        is filled once, as a fork of the shared prefix, and kept with the session.
        """
        best = self._best_retained(member, session_id, prompt)
        if best is not None:
            self._acquire(best)
        if (
            key is not None
            and len(prefix) >= self._config.min_prefix_tokens
            and (best is None or len(best.token_ids) < len(prefix))
        ):
            entry = await self._prefix(member, key, prefix, scheduling)
            if entry is not None:
                if best is not None:
                    self.release(best)
                best = entry
        if session_prefix is not None:
            skey, tokens = session_prefix
            if best is None or len(best.token_ids) < len(tokens):
                entry = await self._prefix(member, skey, tokens, scheduling, best, session_id)
                if entry is not None:
                    if best is not None:
                        self.release(best)  # the new entry holds its parent itself
                    best = entry
        return best

    def release(self, entry: Entry) -> None:
        entry.refs -= 1
        entry.last_used = time.monotonic()
        if entry.refs == 0:
            if entry.evicted:  # its session ended while a user still held it
                self._free_later(entry)
            else:
                self._idle[id(entry)] = entry
                self._trim(entry.member)

    def retain(
        self,
        member: Member,
        session_id: str,
        context_id: str,
        tokens: list[int],
        parent: Entry | None,
    ) -> Entry:
        """Keep a finished call's context for later forks by its session."""
        entry = Entry(member, context_id, tokens, session_id=session_id, parent=parent)
        if parent is not None:
            self._acquire(parent)
        entries = self._retained.setdefault(session_id, [])
        entries.append(entry)
        self._idle[id(entry)] = entry
        while len(entries) > self._config.max_retained_per_session:
            oldest = next((e for e in entries if e.refs == 0), None)
            if oldest is None:
                break
            self._evict(oldest)
        self._trim(member)
        return entry

    def _acquire(self, entry: Entry) -> None:
        entry.refs += 1
        self._idle.pop(id(entry), None)

    def _best_retained(self, member: Member, session_id: str, prompt: list[int]) -> Entry | None:
        best: Entry | None = None
        for entry in self._retained.get(session_id, ()):
            n = len(entry.token_ids)
            if entry.member is not member or n > len(prompt) or entry.evicted:
                continue
            if entry.ready is not None and not entry.ready.done():
                continue  # a session prefix still filling: `_prefix` awaits it by key
            if best is not None and n <= len(best.token_ids):
                continue
            # Cheap probes first; the full comparison only for likely matches.
            ids = entry.token_ids
            if ids[-1] != prompt[n - 1] or ids[n // 2] != prompt[n // 2]:
                continue
            if prompt[:n] == ids:
                best = entry
        return best

    async def _prefix(
        self,
        member: Member,
        key: bytes,
        tokens: list[int],
        scheduling: Scheduling,
        parent: Entry | None = None,
        session_id: str | None = None,
    ) -> Entry | None:
        """The prefix context `key` on `member`, filled once (as a fork of `parent` if
        given; with `session_id`, kept with that session and evicted when it ends)."""
        slot = (member.member_id, key)
        entry = self._prefixes.get(slot)
        if entry is None:
            self._counter += 1
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = Entry(
                member,
                f"px-{self._replica}-{self._counter}",
                tokens,
                key=key,
                session_id=session_id,
                parent=parent,
                ready=ready,
                fill_scheduling=scheduling,
            )
            if parent is not None:
                self._acquire(parent)
            if session_id is not None:
                self._retained.setdefault(session_id, []).append(entry)
            self._prefixes[slot] = entry
            # Its own task: a caller cancelled mid-fill must not strand the other waiters.
            self._track(self._fill(entry, scheduling))
        else:
            self.promote_fill(member, key, scheduling)
        self._acquire(entry)
        try:
            if entry.ready is not None:
                await asyncio.shield(entry.ready)
        except asyncio.CancelledError:
            self.release(entry)
            raise
        except Exception:
            entry.refs -= 1  # the fill failed and the filler already cleaned up
            return None
        return entry

    async def _fill(self, entry: Entry, scheduling: Scheduling) -> None:
        assert entry.ready is not None and entry.key is not None
        member, parent = entry.member, entry.parent
        inherited = len(parent.token_ids) if parent is not None else 0
        try:
            await member.engine.fill(
                FillRequest(
                    context_id=entry.context_id,
                    parent_context_id=parent.context_id if parent is not None else None,
                    token_ids=entry.token_ids[inherited:],
                    scheduling=scheduling,
                )
            )
        except Exception as exc:
            log.warning("prefix fill on %s failed, running unshared: %s", member.member_id, exc)
            self._prefixes.pop((member.member_id, entry.key), None)
            self._unlist(entry)
            entry.evicted = True
            entry.ready.set_exception(exc)
            entry.ready.exception()  # mark retrieved: there may be no waiter left
            with contextlib.suppress(EngineError):
                await member.engine.free(entry.context_id)
            if parent is not None:
                self.release(parent)
            return
        entry.ready.set_result(None)

    # ---- promotion -----------------------------------------------------------------

    def promote_fill(self, member: Member, key: bytes | None, scheduling: Scheduling) -> None:
        """A call that needs prefix `key` on `member` now runs as `scheduling`: a fill of it
        still in flight must not run less urgently (a latency call would wait on it)."""
        entry = self._prefixes.get((member.member_id, key)) if key is not None else None
        if entry is None or entry.ready is None or entry.ready.done():
            return
        if entry.fill_scheduling is not None and not outranks(scheduling, entry.fill_scheduling):
            return
        entry.fill_scheduling = scheduling
        self.reschedule(member, entry.context_id, scheduling)

    def reschedule(self, member: Member, context_id: str, scheduling: Scheduling) -> None:
        """Tell the engine, in the background, to run the work on `context_id` anew."""
        self._track(self._reschedule(member, context_id, scheduling))

    async def _reschedule(self, member: Member, context_id: str, scheduling: Scheduling) -> None:
        try:
            await member.engine.reschedule(
                RescheduleRequest(context_id=context_id, scheduling=scheduling)
            )
        except EngineError as exc:  # e.g. the engine went away: the call's retry sees that
            log.debug("could not reschedule %s: %s", context_id, exc)

    # ---- eviction ------------------------------------------------------------------

    def _evict(self, entry: Entry) -> None:
        """Forget an entry now and free its engine context (at once if idle, else later)."""
        if entry.evicted:
            return
        entry.evicted = True
        if entry.key is not None:
            self._prefixes.pop((entry.member.member_id, entry.key), None)
        self._unlist(entry)
        if entry.refs == 0:
            self._idle.pop(id(entry), None)
            self._free_later(entry)

    def _unlist(self, entry: Entry) -> None:
        """Take an entry off its session's list of kept contexts."""
        entries = self._retained.get(entry.session_id or "")
        if entries is not None and entry in entries:
            entries.remove(entry)
            if not entries:
                del self._retained[entry.session_id or ""]

    def _free_later(self, entry: Entry) -> None:
        self._track(self._free(entry))

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _free(self, entry: Entry) -> None:
        try:
            await entry.member.engine.free(entry.context_id)
        except EngineError as exc:
            log.warning("could not free context %s: %s", entry.context_id, exc)
        if entry.parent is not None:
            self.release(entry.parent)

    def _trim(self, member: Member) -> None:
        """Evict LRU idle entries of `member` beyond the idle budget."""
        stats = member.stats
        budget = None
        if stats is not None and stats.total_blocks:
            budget = int(stats.total_blocks * self._config.idle_kv_fraction)
        idle = [e for e in self._idle.values() if e.member is member]
        blocks = sum(e.num_blocks for e in idle)
        for entry in idle:  # LRU first
            over_count = len(idle) > self._config.max_idle_contexts
            if not over_count and (budget is None or blocks <= budget):
                break
            idle = idle[1:]
            blocks -= entry.num_blocks
            self._evict(entry)

    def expire(self, max_idle_s: float) -> None:
        """Evict idle entries unused for `max_idle_s` (the reaper calls this)."""
        now = time.monotonic()
        for entry in [e for e in self._idle.values() if now - e.last_used >= max_idle_s]:
            self._evict(entry)

    def drop_session(self, session_id: str) -> None:
        """The session ended: evict its retained contexts (newest first: children first)."""
        for entry in reversed(list(self._retained.get(session_id, ()))):
            self._evict(entry)

    async def drain(self) -> None:
        """Wait for pending frees (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        for entry in list(self._idle.values()):
            self._evict(entry)
        await self.drain()
