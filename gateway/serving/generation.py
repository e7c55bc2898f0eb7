"""`Generation`: runs the engine requests of one API request and merges their chunks.

A request with one choice runs it inline in the request's task (no task, no queue: the hot
path); a client that leaves cancels that task once and the engine iterator is closed, which
aborts it. Several choices (n > 1, several prompts) are pumped by one task each into one
queue so that they run concurrently; `close()` cancels the pumps and frees forked parents.

    API request ──> Job(prompt 0, member A) ──> choice 0 ─┐
                                            └─> choice 1 ─┼──> queue ──> events()
                    Job(prompt 1, member B) ──> choice 2 ─┘
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError, EngineUnavailable
from engine.protocol import GenerateChunk, GenerateRequest
from gateway.pool.members import Member

log = logging.getLogger(__name__)

# Given the member that just failed, mark it and return another (or raise a 503 ApiError).
Reroute = Callable[[Member], Awaitable[Member]]
MAX_REROUTES = 2


class ClientGone(Exception):
    """The client disconnected; the generation was aborted."""


@dataclass(slots=True)
class Job:
    """One prompt's choices on one member; when n > 1 they fork `parent_context_id`."""

    member: Member
    requests: list[tuple[int, GenerateRequest]]  # (choice index, request)
    parent_context_id: str | None = None
    cached_tokens: int = 0  # KV reused while filling the parent
    reroute: Reroute | None = None  # only for jobs without a parent (nothing to re-fill)
    release: Callable[[], None] | None = None  # hands back a leased session context


_Item = tuple[int, GenerateChunk | BaseException | None]


class Generation:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._inline: asyncio.Task[Any] | None = None  # the consumer, when not pumped
        self._closed = False
        self.aborted = False

    @property
    def num_choices(self) -> int:
        return sum(len(job.requests) for job in self.jobs)

    def engine_ids(self) -> list[str]:
        return list(dict.fromkeys(job.member.member_id for job in self.jobs))

    def start(self) -> None:
        """Start one pump task per choice (streaming, n > 1, several prompts)."""
        for job in self.jobs:
            for index, request in job.requests:
                self._tasks.append(asyncio.create_task(self._pump(job, index, request)))

    async def events(self) -> AsyncIterator[tuple[int, GenerateChunk]]:
        """(choice index, chunk) until every choice finished; raises the first failure.

        Without `start()`, a single choice runs inline in the caller's task: no task and no
        queue on the hot path of one-choice, non-streaming requests."""
        if not self._tasks:
            if self.num_choices != 1:
                raise RuntimeError("inline generation needs exactly one choice")
            self._inline = asyncio.current_task()
            job = self.jobs[0]
            index, request = job.requests[0]
            try:
                async for chunk in self._choice(job, request):
                    yield index, chunk
            finally:
                self._inline = None  # done: a late disconnect must not cancel close()
            return
        running = self.num_choices
        while running:
            index, item = await self._queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item

    def abort(self) -> None:
        """The client left: stop waiting (close() still has to run). An inline consumer is
        cancelled; it should catch CancelledError, check `aborted` and uncancel()."""
        self.aborted = True
        if self._inline is not None:
            self._inline.cancel()
        else:
            self._queue.put_nowait((-1, ClientGone()))

    async def close(self) -> None:
        """Cancel unfinished choices (their engines abort them), then free forked parents."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self.jobs:
            if job.release is not None:
                job.release()
            if job.parent_context_id is not None:
                try:
                    await job.member.engine.free(job.parent_context_id)
                except EngineError as exc:
                    log.warning("could not free %s: %s", job.parent_context_id, exc)

    async def _pump(self, job: Job, index: int, request: GenerateRequest) -> None:
        try:
            async for chunk in self._choice(job, request):
                self._queue.put_nowait((index, chunk))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._queue.put_nowait((index, exc))
        finally:
            self._queue.put_nowait((index, None))

    async def _choice(self, job: Job, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """One choice's chunks; before its first chunk an unreachable engine is replaced."""
        member = job.member
        member.inflight += 1
        produced = False
        reroutes = 0
        try:
            while True:
                try:
                    chunks = member.engine.generate(request)
                    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                        async for chunk in chunks:
                            produced = True
                            yield chunk
                            if chunk.finish_reason is not None:
                                return
                    return
                except EngineUnavailable:
                    if produced or job.reroute is None or reroutes >= MAX_REROUTES:
                        raise
                    member.inflight -= 1
                    try:
                        member = job.member = await job.reroute(member)
                    finally:
                        member.inflight += 1  # the old one again if rerouting failed
                    reroutes += 1
        finally:
            member.inflight -= 1
