"""`Scheduler`: the ready queue of calls, drained onto engines by the placement policies.

Ready calls wait in one queue. A drain runs on the next loop iteration after anything
changes (a call becomes ready, a call finishes, a session's GET arrives), never by polling:

    ready call ──> queue ──(drain: AppFifo order, engine views, CapacityFit + LatencyCap
                            admit, Isolation + LeastWork rank)──> task

A call ready at submission is held briefly, until its session has been quiet for
`admission_quiet_s` (at most `admission_max_hold_s`), or until a GET waits on its output
(or on one downstream of it): the whole burst of submissions is seen before dispatch, so
objectives and task groups are known. A call that becomes ready later (its inputs were
generated) goes at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec

from engine.protocol import Scheduling, outranks
from gateway.core.config import CoreConfig
from gateway.core.contexts import ContextManager
from gateway.core.entries import prefix_key, session_prefix_key, sibling_run
from gateway.core.graph import Call, CallState, Variable
from gateway.core.objectives import followed_by_latency, upstream_calls
from gateway.core.policies import (
    UNKNOWN_CAPACITY,
    AdaptiveCap,
    AppFifo,
    CapacityFit,
    Demand,
    EngineView,
    Isolation,
    LatencyCap,
    LeastWork,
)
from gateway.core.template import Input, Text
from gateway.pool.members import EnginePool, Member

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # placement estimates prompts before tokenizing them
NOT_STARTED = 1 << 62

# Runs a placed call to its end (the service's executor wrapper).
RunCall = Callable[[Call, Member], Awaitable[None]]
# Fails a call that cannot be placed at all (no engine serves its model).
FailCall = Callable[[Call], None]


class Placer:
    """Composes the policies into one placement of a batch of demands."""

    def __init__(self, fit: CapacityFit = CapacityFit()) -> None:
        self._fit = fit

    def admits(self, view: EngineView, demand: Demand) -> bool:
        return self._fit.admits(view, demand) and LatencyCap.admits(view, demand)

    @staticmethod
    def rank(view: EngineView, demand: Demand, position: int) -> tuple:
        # Load comes before prefix affinity (LeastWork discounts a held prefix by its size):
        # ranking affinity first piled every app sharing one template onto one engine.
        return Isolation.score(view, demand) + LeastWork.score(view, demand) + (-position,)

    def place(
        self, demands: Sequence[Demand], views: Sequence[EngineView]
    ) -> tuple[list[tuple[Demand, EngineView]], list[Demand]]:
        """(placements, held): held demands wait for capacity."""
        placed: list[tuple[Demand, EngineView]] = []
        held: list[Demand] = []
        for demand in AppFifo.order(demands):
            view = self._best(demand, views)
            if view is None and demand.objective == "latency":
                # The cap steers latency calls apart; it does not hold one back while some
                # engine has KV room for it: waiting here only adds to that call's latency
                # (as a gate it held the shared-prompt apps at 4 and 8 req/s to 0.32 and
                # 0.30 s/token on one CPU engine; without it 0.19 and 0.22, one run each).
                view = self._best(demand, views, capped=False)
            if view is None:
                held.append(demand)
                continue
            view.take(demand)
            placed.append((demand, view))
        return placed, held

    def _best(
        self, demand: Demand, views: Sequence[EngineView], capped: bool = True
    ) -> EngineView | None:
        admits = self.admits if capped else self._fit.admits
        ranked = [(self.rank(v, demand, i), v) for i, v in enumerate(views) if admits(v, demand)]
        return max(ranked, key=lambda rv: rv[0])[1] if ranked else None


@dataclass(slots=True)
class Running:
    call: Call
    member_id: str
    demand: Demand


class Scheduler:
    def __init__(
        self,
        config: CoreConfig,
        pool: EnginePool,
        contexts: ContextManager,
        run: RunCall,
        fail: FailCall,
    ) -> None:
        self._config = config
        self._pool = pool
        self._contexts = contexts
        self._run = run
        self._fail = fail
        self._placer = Placer(CapacityFit(config.max_kv_fill))
        self.caps = AdaptiveCap(
            config.latency_target_s_per_token, config.latency_cap, config.latency_cap_max
        )
        self._queue: dict[str, Call] = {}
        self._running: dict[str, Running] = {}
        self._app_ranks = itertools.count()
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.tasks: set[asyncio.Task[None]] = set()

    # ---- events ----------------------------------------------------------------------

    def enqueue(self, call: Call) -> None:
        call.state = CallState.QUEUED
        self._queue[call.call_id] = call
        self.kick()

    def release(self, variable: Variable) -> None:
        """A client waits on `variable`: the calls it needs need not be held any longer.

        Only those: other calls of the session may belong to clients whose own GETs are
        still on the way (several users sharing one session), and a GET that arrives while
        a call is held still sets its objective; once dispatched the objective is fixed.
        """
        for call in upstream_calls(variable):
            call.awaited = True
        self.kick()

    def promote(self, calls: list[Call]) -> None:
        """GETs changed these calls' objectives; those already on an engine are re-ranked
        there (their generate and any prefix fill they wait on). Queued calls need nothing:
        their objective is read when they are placed."""
        for call in calls:
            running = self._running.get(call.call_id)
            member = self._pool.get(running.member_id) if running is not None else None
            if running is None or member is None or call.scheduling is None:
                continue
            scheduling = Scheduling(
                objective=call.objective,
                priority=call.priority,
                group_id=call.group_id,
                app_id=call.session.app_id,
            )
            if not outranks(scheduling, call.scheduling):
                continue
            call.scheduling = scheduling
            running.demand = dataclasses.replace(
                running.demand, objective=scheduling.objective, priority=scheduling.priority
            )
            for key in (running.demand.prefix_key, running.demand.run_key):
                self._contexts.promote_fill(member, key, scheduling)
            # The GET marked the calls downstream too: what this one feeds may now be
            # latency-critical work that goes out the moment it finishes.
            followup = followed_by_latency(call, call.stage)
            self._contexts.reschedule(
                member, call.context_id, msgspec.structs.replace(scheduling, followup=followup)
            )

    def forget(self, call: Call) -> None:
        self._queue.pop(call.call_id, None)

    def kick(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    # ---- the drain -------------------------------------------------------------------

    def _eligible_at(self, call: Call) -> float:
        if call.awaited:
            return float("-inf")
        cfg = self._config
        return min(
            call.session.last_submit + cfg.admission_quiet_s,
            call.submitted_at + cfg.admission_max_hold_s,
        )

    def _drain(self) -> None:
        self._scheduled = False
        now = time.monotonic()
        by_model: dict[str, list[Call]] = {}
        wake_at = float("inf")
        for call in self._queue.values():
            at = self._eligible_at(call)
            if at <= now:
                by_model.setdefault(call.model, []).append(call)
            else:
                wake_at = min(wake_at, at)
        if wake_at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = wake_at
            self._timer = asyncio.get_running_loop().call_later(wake_at - now, self._on_timer)
        for model, calls in by_model.items():
            self._place(model, calls)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self.kick()

    def _place(self, model: str, calls: list[Call]) -> None:
        members = {m.member_id: m for m in self._pool.serving(model)}
        if not members:
            for call in calls:
                self._queue.pop(call.call_id, None)
                self._fail(call)
            return
        demands = {call.call_id: self._demand(call) for call in calls}
        views = self._views(members)
        placed, _held = self._placer.place(list(demands.values()), views)
        for demand, view in placed:
            call = self._queue.pop(demand.call_id)
            self._start(call, members[view.member_id], demand)

    def _demand(self, call: Call) -> Demand:
        session = call.session
        chars = 0
        for segment in call.segments:
            if isinstance(segment, Text):
                chars += len(segment.text)
            elif isinstance(segment, Input):
                bound = call.inputs[segment.name]
                chars += len(bound.value or "") if isinstance(bound, Variable) else len(bound)
        first = call.segments[0]
        key, prefix_chars = None, 0
        if self._config.share_prefixes and isinstance(first, Text):
            key = prefix_key(call.model, session.cache_salt, first.text)
            prefix_chars = len(first.text)
        run = sibling_run(call) if self._config.share_prefixes else None
        run_key, run_chars = None, 0
        if run is not None:
            run_key = session_prefix_key(call.model, session, call.chat, run)
            for segment in call.segments[: len(run)]:  # text, or variables (the run has no literal)
                bound = call.inputs[segment.name] if isinstance(segment, Input) else None
                if isinstance(segment, Text):
                    run_chars += len(segment.text)
                elif isinstance(bound, Variable):
                    run_chars += len(bound.value or "")
            run_chars -= prefix_chars
        # Applications that have not started yet come after every started one.
        rank = session.app_rank if session.app_rank is not None else NOT_STARTED
        return Demand(
            call_id=call.call_id,
            objective=call.objective,
            app_rank=rank,
            seq=call.seq,
            est_tokens=(chars - prefix_chars - run_chars) // CHARS_PER_TOKEN
            + sum(s.sampling.max_tokens for s in call.outputs),
            priority=call.priority,
            group_id=call.group_id,
            prefix_key=key,
            prefix_tokens=prefix_chars // CHARS_PER_TOKEN,
            run_key=run_key,
            run_tokens=run_chars // CHARS_PER_TOKEN,
        )

    def _views(self, members: dict[str, Member]) -> list[EngineView]:
        views: dict[str, EngineView] = {}
        for member_id, member in members.items():
            stats, info = member.stats, member.info
            capacity = UNKNOWN_CAPACITY
            if stats is not None and stats.total_blocks and info is not None:
                capacity = stats.total_blocks * info.block_size
            views[member_id] = EngineView(
                member_id,
                capacity_tokens=capacity,
                latency_cap=self.caps.cap(member_id),
                prefixes=self._contexts.keys_on(member_id),
            )
        for running in self._running.values():
            view = views.get(running.member_id)
            if view is not None:
                view.take(running.demand)
        return list(views.values())

    def _start(self, call: Call, member: Member, demand: Demand) -> None:
        session = call.session
        if session.app_rank is None:
            session.app_rank = next(self._app_ranks)
        call.state = CallState.RUNNING
        # Objectives may still change; what the engine is told is fixed from here on.
        call.scheduling = Scheduling(
            objective=demand.objective,
            priority=demand.priority,
            group_id=demand.group_id,
            app_id=session.app_id,
        )
        self._running[call.call_id] = Running(call, member.member_id, demand)
        task = asyncio.get_running_loop().create_task(self._supervise(call, member))
        call.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _supervise(self, call: Call, member: Member) -> None:
        member.inflight += 1  # plain OpenAI routing sees this work too
        try:
            await self._run(call, member)
        finally:
            member.inflight -= 1
            self._running.pop(call.call_id, None)
            self.kick()  # capacity freed: held calls may fit now

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
