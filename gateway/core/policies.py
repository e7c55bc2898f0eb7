"""App-centric placement policies: small pure classes the scheduler composes.

Each sees a `Demand` (what a ready call needs) and `EngineView`s (what this gateway knows of
each engine). `admits` says whether an engine may take the work now; `score` ranks the
engines that admit it (higher is better). Nothing here touches an engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.protocol import Objective

UNKNOWN_CAPACITY = 1 << 40  # engines that do not report KV blocks (echo, some upstreams)


@dataclass(frozen=True, slots=True)
class Demand:
    """One ready call as the scheduler sees it."""

    call_id: str
    objective: Objective
    app_rank: int  # sessions that started dispatching earlier rank lower (go first)
    seq: int  # submission order
    est_tokens: int  # prompt + max new tokens, the shared prefix excluded
    priority: int = 0
    group_id: str | None = None
    prefix_key: bytes | None = None
    prefix_tokens: int = 0
    run_key: bytes | None = None  # a session prefix extending the prefix (its siblings')
    run_tokens: int = 0  # beyond prefix_tokens


@dataclass(slots=True)
class EngineView:
    """One engine: its size and the work this gateway placed on it."""

    member_id: str
    capacity_tokens: int = UNKNOWN_CAPACITY
    reserved_tokens: int = 0
    latency_calls: int = 0
    throughput_calls: int = 0
    latency_cap: int = 32
    prefixes: set[bytes] = field(default_factory=set)  # prefix contexts it holds (or fills)

    @property
    def idle(self) -> bool:
        return self.latency_calls == 0 and self.throughput_calls == 0

    def cost(self, demand: Demand) -> int:
        """Tokens the demand adds here: a prefix (or a session prefix extending it) is free
        where the engine already has it."""
        cost = demand.est_tokens
        if demand.prefix_key is None or demand.prefix_key not in self.prefixes:
            cost += demand.prefix_tokens
        if demand.run_key is None or demand.run_key not in self.prefixes:
            cost += demand.run_tokens
        return cost

    def take(self, demand: Demand) -> None:
        self.reserved_tokens += self.cost(demand)
        if demand.objective == "latency":
            self.latency_calls += 1
        else:
            self.throughput_calls += 1
        for key in (demand.prefix_key, demand.run_key):
            if key is not None:
                self.prefixes.add(key)


class AppFifo:
    """Order of ready work: latency first, then priority, then older applications, then
    older calls, keeping a task group's members next to each other.

    That order, and the group id every member carries to its engine (whose scheduler runs a
    group's members together), is all a task group gets here: the members are then placed
    one by one like any call. Putting a whole group on one engine serialized its prefills
    and lost to plain least-loaded routing in the 16-engine simulation (map-reduce 3.20 s vs
    2.56 s per app at low load, docs/BENCHMARKS.md)."""

    @staticmethod
    def order(demands: Iterable[Demand]) -> list[Demand]:
        demands = list(demands)
        group_seq: dict[str, int] = {}
        for d in demands:
            if d.group_id is not None:
                group_seq[d.group_id] = min(group_seq.get(d.group_id, d.seq), d.seq)
        return sorted(
            demands,
            key=lambda d: (
                d.objective != "latency",
                -d.priority,
                d.app_rank,
                group_seq.get(d.group_id, d.seq) if d.group_id else d.seq,
                d.seq,
            ),
        )


@dataclass(frozen=True, slots=True)
class CapacityFit:
    """Work goes where its KV fits (shared prefixes counted once); an idle engine takes
    anything, so an oversized call fails on the engine with a clear error, not by waiting."""

    max_fill: float = 0.9

    def admits(self, view: EngineView, demand: Demand) -> bool:
        if view.idle:
            return True
        return view.reserved_tokens + view.cost(demand) <= view.capacity_tokens * self.max_fill


class LatencyCap:
    """An engine running latency-critical work keeps its batch small: latency calls go to
    engines under `view.latency_cap` of them first (the cap adapts to the measured per-token
    latency, see `AdaptiveCap`). When every engine is at its cap the call still goes to the
    best one (the `Placer` decides): holding it back would only add to its latency."""

    @staticmethod
    def admits(view: EngineView, demand: Demand) -> bool:
        return demand.objective != "latency" or view.latency_calls < view.latency_cap


class Isolation:
    """Latency work prefers engines without throughput work, and throughput work engines
    without latency work, so large batches never slow a latency-critical call's steps."""

    @staticmethod
    def score(view: EngineView, demand: Demand) -> tuple[int, ...]:
        if demand.objective == "latency":
            return (view.throughput_calls == 0,)
        return (view.latency_calls == 0,)


class LeastWork:
    """Among equally suitable engines, the one whose placed work plus this call is least, in
    KV tokens. A prefix the engine already holds (or is filling) costs nothing there, so
    calls sharing a long prefix stay together until the imbalance outweighs re-filling the
    prefix elsewhere; a short shared instruction barely counts, so such calls spread."""

    @staticmethod
    def score(view: EngineView, demand: Demand) -> tuple[int, ...]:
        return (-(view.reserved_tokens + view.cost(demand)),)


@dataclass(slots=True)
class AdaptiveCap:
    """Per-engine latency cap from measured per-token latency against a target (AIMD):
    over the target the cap halves, well under it the cap grows by one."""

    target_s_per_token: float
    initial: int = 32
    maximum: int = 32
    smoothing: float = 0.3
    _caps: dict[str, int] = field(default_factory=dict)
    _measured: dict[str, float] = field(default_factory=dict)

    def cap(self, member_id: str) -> int:
        return self._caps.get(member_id, self.initial)

    def measured(self, member_id: str) -> float | None:
        return self._measured.get(member_id)

    def observe(self, member_id: str, s_per_token: float) -> None:
        """A latency-critical call on `member_id` decoded at `s_per_token`."""
        if self.target_s_per_token <= 0:
            return
        old = self._measured.get(member_id)
        ewma = s_per_token if old is None else old + self.smoothing * (s_per_token - old)
        self._measured[member_id] = ewma
        cap = self.cap(member_id)
        if ewma > self.target_s_per_token:
            self._caps[member_id] = max(1, cap // 2)
        elif ewma < 0.7 * self.target_s_per_token:
            self._caps[member_id] = min(self.maximum, cap + 1)
