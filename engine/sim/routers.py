"""Request-level routers: the baselines the Parrot scheduler is compared with.

Each places a request the moment it arrives and never holds it; none knows apps,
objectives or task groups (`app_aware = False`):

- `RoundRobin`: engines in turn.
- `LeastLoaded`: the engine with the fewest outstanding requests.
- `PrefixAffine`: like SGLang's cache-aware router - an approximate per-engine prefix index
  of what was routed there; a request goes to the engine with the longest match when the
  match covers more than `cache_threshold` of the prompt and the pool is balanced,
  otherwise to the least loaded engine.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

from engine.sim.driver import CallView


@dataclass(slots=True)
class _Load:
    num_engines: int
    outstanding: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outstanding = [0] * self.num_engines

    def least(self) -> int:
        return min(range(self.num_engines), key=lambda i: (self.outstanding[i], i))


class RoundRobin:
    name = "round-robin"
    app_aware = False

    def __init__(self, num_engines: int) -> None:
        self._next = itertools.cycle(range(num_engines))

    async def acquire(self, call: CallView) -> int:
        return next(self._next)

    def release(self, call: CallView, engine: int) -> None:
        return None

    def observe(self, engine: int, s_per_token: float) -> None:
        return None


class LeastLoaded:
    name = "least-loaded"
    app_aware = False

    def __init__(self, num_engines: int) -> None:
        self.load = _Load(num_engines)

    async def acquire(self, call: CallView) -> int:
        engine = self.load.least()
        self.load.outstanding[engine] += 1
        return engine

    def release(self, call: CallView, engine: int) -> None:
        self.load.outstanding[engine] -= 1

    def observe(self, engine: int, s_per_token: float) -> None:
        return None


class _BlockIndex:
    """Chained block hashes of prompts routed to one engine, LRU-bounded like a radix tree
    that evicts its oldest leaves."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size = block_size
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def _hashes(self, token_ids: list[int]) -> list[int]:
        h, out = 0, []
        for i in range(0, len(token_ids) - self.block_size + 1, self.block_size):
            h = hash((h, tuple(token_ids[i : i + self.block_size])))
            out.append(h)
        return out

    def match(self, token_ids: list[int]) -> int:
        n = 0
        for h in self._hashes(token_ids):
            if h not in self._blocks:
                break
            n += self.block_size
        return n

    def insert(self, token_ids: list[int]) -> None:
        for h in self._hashes(token_ids):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)


class PrefixAffine:
    name = "prefix-affine"
    app_aware = False

    def __init__(
        self,
        num_engines: int,
        block_size: int = 16,
        capacity_blocks: int = 1 << 16,
        cache_threshold: float = 0.5,
        balance_abs: int = 32,
        balance_rel: float = 1.5,
    ) -> None:
        self.load = _Load(num_engines)
        self._trees = [_BlockIndex(block_size, capacity_blocks) for _ in range(num_engines)]
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def _balanced(self) -> bool:
        loads = self.load.outstanding
        low, high = min(loads), max(loads)
        return high - low <= self.balance_abs or high <= low * self.balance_rel

    async def acquire(self, call: CallView) -> int:
        prompt = call.prompt_ids
        engine = self.load.least()
        if self._balanced() and prompt:
            matches = [tree.match(prompt) for tree in self._trees]
            best = max(range(len(matches)), key=lambda i: (matches[i], -self.load.outstanding[i]))
            if matches[best] / len(prompt) > self.cache_threshold:
                engine = best
        self._trees[engine].insert(prompt)
        self.load.outstanding[engine] += 1
        return engine

    def release(self, call: CallView, engine: int) -> None:
        self.load.outstanding[engine] -= 1

    def observe(self, engine: int, s_per_token: float) -> None:
        return None
