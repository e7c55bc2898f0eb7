"""A consistent `EngineStats` snapshot of the builtin engine's (or the simulator's) state."""

from __future__ import annotations

from engine.builtin.block_manager import BlockManager
from engine.builtin.contexts import ContextTable
from engine.builtin.scheduler import Scheduler
from engine.protocol import EngineStats


def snapshot(
    counters: EngineStats, scheduler: Scheduler, contexts: ContextTable, blocks: BlockManager
) -> EngineStats:
    """Fill the gauges into the running counters and return a copy the caller may keep."""
    s = counters
    s.num_running = len(scheduler.running)
    s.num_waiting = len(scheduler.waiting)
    s.num_latency_running = sum(q.is_latency for q in scheduler.running)
    s.num_contexts = len(contexts)
    s.free_blocks = blocks.num_free_blocks
    s.cached_blocks = blocks.num_cached_blocks
    s.peak_used_blocks = blocks.peak_used_blocks
    s.preemptions = scheduler.num_preemptions
    return EngineStats(**{f: getattr(s, f) for f in s.__struct_fields__})
