"""How many torch threads a step's attention runs on.

The engine runs on every core by default. Given fewer (`--threads`, e.g. to leave a core to
something else), a step's attention may still run on all cores when its tokens attend to
long contexts, where a second thread made steps up to 1.65x faster; steps over short contexts
were measured slower with the second thread then (docs/BENCHMARKS.md, "Engine threads when
serving": measured while every parallel region of a step paid for waking a sleeping OpenMP
worker, engine/builtin/cpu_tuning.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing only: this module stays free of torch, for the gateway
    from engine.builtin.scheduler import Chunk


def machine_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def attention_pairs(chunks: Sequence[Chunk]) -> int:
    """Query-key pairs the step's attention computes, per head and layer: a decode row attends
    to its whole context; a prefill chunk of n tokens after `start` computed ones attends to
    start + 1 .. start + n keys (causal). Call before the step commits its tokens."""
    pairs = 0
    for c in chunks:
        start, n = c.seq.context.num_computed, c.num_tokens
        pairs += n * start + n * (n + 1) // 2
    return pairs


@dataclass(frozen=True, slots=True)
class AttentionThreads:
    """Attention runs on `wide` threads in steps whose computed tokens attend to at least
    `min_context` keys on average; everything else (matmuls, layer ops) stays on the engine's
    own count. The mean context per token, not the step's total work, decides: served, steps
    of many rows over short contexts lost with a second thread even in their attention alone
    (measured before the C kernel read shared prefixes itself; an engine alone later gained
    from it at 600-token private contexts, docs/BENCHMARKS.md, "Engine threads when
    serving")."""

    wide: int
    min_context: int

    def for_step(self, pairs: int, tokens: int, narrow: int) -> int | None:
        """Threads for this step's attention; None: the engine's own count."""
        if self.wide <= narrow or not tokens:
            return None
        return self.wide if pairs >= self.min_context * tokens else None
