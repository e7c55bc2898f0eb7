"""Applications as data: DAGs of calls over token segments, for simulated and real engines.

An `AppSpec` is what a workload generator produces and what the drivers (engine/sim/
driver.py) run: its calls' prompts are segments - a `Shared` constant prefix (system
prompt, instructions: one content key shared by every call and app that uses it), private
`Tokens`, or `OutputOf` an earlier call (which makes the DAG). Token ids are synthetic:
the simulator costs token counts and caches by ids, so only sizes and sharing matter.

Generators for the paper's five application workloads take (bank, app id, scale) and
`poisson_apps` gives them Poisson arrivals; `scale` shrinks every length (0.25 suits the
CPU SmolLM2 profile). They mirror loadtest/apps/ with synthetic tokens: chain summary,
map-reduce, the shared system prompt (as `copilot`, one long prompt, and `gpts`, four apps
with prompts of different lengths), multi-agent and mixed chat + map-reduce.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.protocol import Objective


@dataclass(frozen=True, slots=True)
class Shared:
    key: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Tokens:
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OutputOf:
    call: str


Segment = Shared | Tokens | OutputOf


@dataclass(frozen=True, slots=True)
class CallSpec:
    name: str
    prompt: tuple[Segment, ...]
    output_tokens: int
    objective: Objective = "latency"
    group: str | None = None  # calls feeding one consumer (a map stage) form a task group

    @property
    def deps(self) -> tuple[str, ...]:
        return tuple(s.call for s in self.prompt if isinstance(s, OutputOf))


@dataclass(frozen=True, slots=True)
class AppSpec:
    app_id: str
    kind: str
    arrival_s: float
    calls: tuple[CallSpec, ...]  # in a topological order


class Tokenbank:
    """Fresh random token ids, and the same ids again for the same shared key."""

    def __init__(self, rng: random.Random, vocab: int = 30000) -> None:
        self._rng = rng
        self._vocab = vocab
        self._shared: dict[str, Shared] = {}

    def fresh(self, n: int) -> Tokens:
        return Tokens(tuple(self._rng.randrange(256, self._vocab) for _ in range(max(n, 1))))

    def pick(self, n: int) -> int:
        """A random index below n (seeded, unlike `hash`)."""
        return self._rng.randrange(n)

    def shared(self, key: str, n: int) -> Shared:
        if key not in self._shared:
            self._shared[key] = Shared(key, self.fresh(n).token_ids)
        return self._shared[key]


def _n(x: float, scale: float) -> int:
    return max(int(x * scale), 1)


def chain_summary(bank: Tokenbank, app: str, scale: float) -> list[CallSpec]:
    """Summarize a document chunk by chunk, each step refining the previous summary."""
    calls: list[CallSpec] = []
    for i in range(6):
        prompt: list[Segment] = [
            bank.shared("chain-instr", _n(120, scale)),
            bank.fresh(_n(1024, scale)),
        ]
        if calls:
            prompt.append(OutputOf(calls[-1].name))
        calls.append(CallSpec(f"{app}/s{i}", tuple(prompt), _n(50, scale)))
    return calls


def map_reduce(bank: Tokenbank, app: str, scale: float) -> list[CallSpec]:
    """Summarize chunks independently (one task group), then merge the summaries."""
    maps = [
        CallSpec(
            f"{app}/m{i}",
            (bank.shared("map-instr", _n(120, scale)), bank.fresh(_n(1024, scale))),
            _n(50, scale),
            group=f"{app}/maps",
        )
        for i in range(8)
    ]
    reduce_prompt = (bank.shared("reduce-instr", _n(80, scale)), *(OutputOf(m.name) for m in maps))
    return [*maps, CallSpec(f"{app}/reduce", reduce_prompt, _n(100, scale))]


def copilot(bank: Tokenbank, app: str, scale: float) -> list[CallSpec]:
    """One chat turn behind a long system prompt that every user shares (Bing Copilot)."""
    rng_out = 200 + bank.pick(5) * 50
    prompt = (bank.shared("copilot-system", _n(3000, scale)), bank.fresh(_n(60, scale)))
    return [CallSpec(f"{app}/chat", prompt, _n(rng_out, scale))]


def gpts(bank: Tokenbank, app: str, scale: float) -> list[CallSpec]:
    """One of four GPTs apps, each with its own long instructions, and a short query."""
    kind = bank.pick(4)
    system = bank.shared(f"gpts-{kind}", _n((1000, 1500, 2200, 3000)[kind], scale))
    return [CallSpec(f"{app}/ask", (system, bank.fresh(_n(40, scale))), _n(100, scale))]


def multi_agent(bank: Tokenbank, app: str, scale: float, files: int = 4) -> list[CallSpec]:
    """MetaGPT-like: architect -> programmers -> reviewers -> revisers, stages sharing a
    common prefix (the role prompt and the architect's design)."""
    role = bank.shared("agent-roles", _n(600, scale))
    arch = CallSpec(f"{app}/arch", (role, bank.fresh(_n(200, scale))), _n(300, scale), "throughput")
    calls = [arch]
    for stage, out in (("code", 300), ("review", 150), ("revise", 300)):
        for f in range(files):
            prompt: list[Segment] = [role, OutputOf(arch.name), bank.fresh(_n(40, scale))]
            if stage != "code":
                prompt.append(OutputOf(f"{app}/code{f}"))
            if stage == "revise":
                prompt.append(OutputOf(f"{app}/review{f}"))
            calls.append(
                CallSpec(
                    f"{app}/{stage}{f}",
                    tuple(prompt),
                    _n(out, scale),
                    "throughput",
                    group=f"{app}/{stage}",
                )
            )
    return calls


def mixed(bank: Tokenbank, app: str, scale: float) -> list[CallSpec]:
    """Latency-sensitive chat turns (three apps in four) among map-reduce batch jobs that
    nobody awaits with latency, so their calls are throughput work."""
    if bank.pick(4):
        prompt = (bank.shared("chat-system", _n(200, scale)), bank.fresh(_n(80, scale)))
        return [CallSpec(f"{app}/chat", prompt, _n(100, scale))]
    return [replace(c, objective="throughput") for c in map_reduce(bank, app, scale)]


AppShape = Callable[[Tokenbank, str, float], list[CallSpec]]
WORKLOADS: dict[str, AppShape] = {
    "chain_summary": chain_summary,
    "map_reduce": map_reduce,
    "copilot": copilot,
    "gpts": gpts,
    "multi_agent": multi_agent,
    "mixed": mixed,
}


def poisson_apps(
    kind: str, n_apps: int, rate: float, seed: int = 0, scale: float = 1.0
) -> list[AppSpec]:
    """`n_apps` apps of one kind arriving as a Poisson process of `rate` apps per second."""
    rng = random.Random(seed)
    bank = Tokenbank(rng)
    shape = WORKLOADS[kind]
    apps, t = [], 0.0
    for i in range(n_apps):
        app_id = f"{kind}-{i}"
        apps.append(AppSpec(app_id, kind, t, tuple(shape(bank, app_id, scale))))
        t += rng.expovariate(rate) if rate > 0 else 0.0
    return apps
