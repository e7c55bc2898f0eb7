"""Continuous batching with Parrot's hooks: objectives, priorities, app-FIFO, task groups,
a latency cap, chunked prefill under a token budget, and preemption when KV blocks run out.

Every step walks all live sequences in one order,

    (latency before throughput, higher priority, older app, older group, older request)

stepping running ones and admitting waiting ones until the batch cap, the token budget or
the KV blocks run out. While any latency-critical work is live, at most `latency_cap`
sequences are stepped, and throughput work joins a step only while its share of the
recent step time is under `throughput_share`, and then only up to `latency_step_tokens`
tokens in all. On a CPU every extra row or prefill token lengthens the step that a
latency-critical decode rides in (a 512-token prefill chunk makes a 30 ms decode step
take half a second), so latency work mostly steps alone; the share keeps throughput work
from starving under a steady stream of latency work. Throughput work with a positive
priority is exempt: the gateway gives that to a task group whose result someone awaits
with latency (a map stage before a latency-critical reduce), which is on a latency path.

A latency-critical call's next step comes a moment after it finishes: the gateway hands its
output to the dependent call (a chain's next link, a call's next output, the generate that
forks a fill) and sends that one. On an idle-looking engine that moment is enough for
throughput work to start a full step (0.4-0.9 s of prefill here) that the follow-up then
waits out. So when work the gateway marked `followup` (or a latency-critical fill) finishes,
throughput work holds off for up to `followup_hold_s`, or until latency work arrives.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from engine.builtin.contexts import ContextTable
from engine.builtin.sequence import Sequence, Status
from engine.protocol import Scheduling


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_batch_size: int = 64
    max_step_tokens: int = 512
    latency_cap: int = 64
    latency_step_tokens: int = 128  # a step holding throughput work while latency is live
    throughput_share: float = 0.1  # of recent step time, throughput's while latency is live
    share_window_s: float = 2.0  # time constant of that "recent"
    followup_hold_s: float = 0.05  # throughput waits this long for a latency follow-up

    def __post_init__(self) -> None:
        if not 0.0 <= self.throughput_share <= 1.0:
            raise ValueError(f"throughput_share must be in [0, 1], not {self.throughput_share}")
        if self.share_window_s <= 0:
            raise ValueError(f"share_window_s must be positive, not {self.share_window_s}")
        if self.followup_hold_s < 0:
            raise ValueError(f"followup_hold_s must be >= 0, not {self.followup_hold_s}")


class Chunk(NamedTuple):
    seq: Sequence
    num_tokens: int  # pending tokens computed this step (0: a fill served from cache)
    sample: bool  # the chunk reaches the end of the context and the request generates


class StepPlan(NamedTuple):
    chunks: list[Chunk]
    preempted: list[Sequence]
    rejected: list[Sequence]  # cannot fit in the KV cache even alone


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        contexts: ContextTable,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.contexts = contexts
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._ticket = itertools.count()
        self._first_seen: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (rank, live)
        self.num_preemptions = 0
        # Decayed step seconds, all and those with throughput work in them (see observe()).
        self._step_s = 0.0
        self._throughput_s = 0.0
        self._clock = clock
        self._hold_until = 0.0  # throughput waits for a latency follow-up until then

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def _rank(self, kind: str, name: str | None) -> int:
        if name is None:
            return next(self._ticket)
        rank, live = self._first_seen.get((kind, name), (next(self._ticket), 0))
        self._first_seen[(kind, name)] = (rank, live + 1)
        return rank

    def _release_rank(self, kind: str, name: str | None) -> None:
        if name is None:
            return
        rank, live = self._first_seen[(kind, name)]
        if live == 1:
            del self._first_seen[(kind, name)]
        else:
            self._first_seen[(kind, name)] = (rank, live - 1)

    def add(self, seq: Sequence) -> None:
        if seq.is_latency:
            self._hold_until = 0.0  # the follow-up (or other latency work) is here
        self._order(seq)
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def _order(self, seq: Sequence) -> None:
        s = seq.scheduling
        group = self._rank("group", s.group_id)
        # A group outside any app still keeps its members together.
        app = self._rank("app", s.app_id) if s.app_id is not None or s.group_id is None else group
        seq.order_key = (0 if seq.is_latency else 1, -s.priority, app, group, next(self._ticket))

    def reschedule(self, context_id: str, scheduling: Scheduling) -> bool:
        """Rank the live sequence on `context_id` anew (a GET promoted it); False if none.

        A running sequence stays running: the next `schedule()` sorts it by its new key.
        """
        for seq in itertools.chain(self.running, self.waiting):
            if seq.context.context_id == context_id:
                self._release_rank("app", seq.scheduling.app_id)
                self._release_rank("group", seq.scheduling.group_id)
                seq.scheduling = scheduling
                self._order(seq)
                return True
        return False

    def remove(self, seq: Sequence, completed: bool = False) -> None:
        """Drop a finished or aborted sequence (releasing nothing of its context).

        `completed`: it ran to its end, so any follow-up it announced is on its way.
        """
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        self._release_rank("app", seq.scheduling.app_id)
        self._release_rank("group", seq.scheduling.group_id)
        followed = seq.scheduling.followup or (seq.is_fill and seq.is_latency)
        if completed and followed and self.config.followup_hold_s > 0:
            self._hold_until = self._clock() + self.config.followup_hold_s

    def hold_left(self) -> float:
        """Seconds throughput work still holds off for a latency follow-up (0: none).

        Latency work arriving ends the hold (`add`); latency work already live outranks
        throughput work anyway, so the hold only matters once none is left.
        """
        if not self._hold_until:
            return 0.0
        left = self._hold_until - self._clock()
        if left <= 0:
            self._hold_until = 0.0
            return 0.0
        return left

    def observe(self, seconds: float, chunks: list[Chunk]) -> None:
        """Account a finished step of `chunks`, for throughput's share of recent step time."""
        keep = math.exp(-seconds / self.config.share_window_s)
        throughput = any(c.num_tokens and not c.seq.is_latency for c in chunks)
        self._step_s = self._step_s * keep + seconds
        self._throughput_s = self._throughput_s * keep + (seconds if throughput else 0.0)

    @property
    def throughput_share(self) -> float:
        return self._throughput_s / self._step_s if self._step_s else 0.0

    @property
    def num_latency_live(self) -> int:
        return sum(s.is_latency for s in itertools.chain(self.running, self.waiting))

    def schedule(self) -> StepPlan:
        cfg = self.config
        live = sorted(itertools.chain(self.running, self.waiting), key=lambda s: s.order_key)
        cap = cfg.max_batch_size
        latency_live = any(s.is_latency for s in live)
        holding = not latency_live and self.hold_left() > 0
        if latency_live:
            cap = min(cap, cfg.latency_cap)
        throughput_turn = (
            cfg.throughput_share >= 1.0 or self.throughput_share < cfg.throughput_share
        )
        budget = cfg.max_step_tokens
        chunks: list[Chunk] = []
        preempted: list[Sequence] = []
        rejected: list[Sequence] = []
        chosen: set[int] = set()
        for seq in live:
            if len(chunks) >= cap or budget <= 0:
                break
            if seq.status is Status.WAITING:
                if len(self.running) >= cfg.max_batch_size:
                    break
                cached = self.contexts.match_cached(seq.context, keep_last=not seq.is_fill)
                if not seq.admitted:  # first admission, not a resumed preemption
                    seq.num_cached_tokens += cached
                    seq.admitted = True
            ctx = seq.context
            n = min(ctx.num_pending, budget)
            if holding and seq.scheduling.priority <= 0:
                break  # keep the engine free for the follow-up; see hold_left()
            if latency_live and not seq.is_latency and seq.scheduling.priority <= 0:
                # Latency work sorts first, so what is spent so far is its own.
                spent = cfg.max_step_tokens - budget
                n = min(n, max(cfg.latency_step_tokens - spent, 0))
                if n <= 0 or (chunks and not throughput_turn):
                    break
            while not self.contexts.reserve(ctx, n):
                victim = self._victim(seq, chosen)
                if victim is None:
                    break
                self._preempt(victim)
                preempted.append(victim)
            else:
                if seq.status is Status.WAITING:
                    self.waiting.remove(seq)
                    self.running.append(seq)
                    seq.status = Status.RUNNING
                chosen.add(id(seq))
                done = n == ctx.num_pending
                chunks.append(Chunk(seq, n, done and not seq.is_fill))
                budget -= n
                continue
            # No room even after preempting everything below this sequence.
            if not chunks and not self._others_hold_blocks(seq):
                rejected.append(seq)
                continue
            break  # keep order: lower-ranked work must not overtake a blocked sequence
        return StepPlan(chunks, preempted, rejected)

    def _victim(self, seq: Sequence, chosen: set[int]) -> Sequence | None:
        """The lowest-ranked running sequence ranked below `seq` and not stepped this round."""
        candidates = [
            s
            for s in self.running
            if s is not seq and id(s) not in chosen and s.order_key > seq.order_key
        ]
        return max(candidates, key=lambda s: s.order_key, default=None)

    def _preempt(self, seq: Sequence) -> None:
        self.contexts.release(seq.context)
        self.running.remove(seq)
        self.waiting.append(seq)
        seq.status = Status.WAITING
        self.num_preemptions += 1

    def _others_hold_blocks(self, seq: Sequence) -> bool:
        """Whether waiting could help: another running sequence may finish and free blocks."""
        return any(s is not seq for s in self.running)
