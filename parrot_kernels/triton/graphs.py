"""CUDA graphs of decode-only steps, captured on first use per padded batch size.

A decode step of a small model or a small batch is bound by kernel launches (about 15 per
layer), not by the GPU. A captured graph issues the whole step at once. A graph fixes
shapes and launch grids, so each is captured for one size from GRAPH_BATCHES with every
metadata field at a fixed capacity (batch.py). A step of B rows replays the smallest graph
with at least B rows; its padded rows attend nothing and write no KV. Steps with prefill
chunks, or with more rows than the largest size, run eagerly: big batches are bound by
bandwidth or compute, where launches hide behind the work.

Graphs share one memory pool; they are replayed one at a time, each holding its own input
and output buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

from parrot_kernels.triton import decode, prefix
from parrot_kernels.triton.batch import Capacity
from parrot_kernels.triton.step import PagedKV, TritonAttention, choose_splits, sm_count

log = logging.getLogger(__name__)

GRAPH_BATCHES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64)

# forward(token ids [B], positions [B], attention, logit rows [R]) -> logits [R, V]
Forward = Callable[[torch.Tensor, torch.Tensor, TritonAttention, torch.Tensor], torch.Tensor]


def graph_capacity(batch: int, q_per_kv: int, max_blocks: int) -> Capacity:
    """Room for any decode-only step of up to `batch` rows (at most batch // 2 groups)."""
    groups = max(1, batch // 2)
    return Capacity(
        tokens=batch,
        decodes=batch,
        width=max_blocks,
        groups=groups,
        grp_width=max_blocks,
        tiles=triton.cdiv(batch * q_per_kv, prefix.BLOCK_M) + groups,
        prefills=0,
        pf_width=0,
        pf_tiles=0,
    )


@dataclass(slots=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor  # [3, B] int64: token ids, positions, logit rows
    plan: TritonAttention  # static metadata buffer, refilled before each replay
    logits: torch.Tensor


class DecodeGraphs:
    def __init__(
        self,
        forward: Forward,
        kv: PagedKV,
        scale: float,
        num_heads: int,
        max_blocks: int,
        sizes: tuple[int, ...] = GRAPH_BATCHES,
    ):
        self.forward = forward
        self.kv = kv
        self.scale = scale
        self.num_heads = num_heads
        self.q_per_kv = num_heads // kv.k.shape[2]
        self.max_blocks = max_blocks
        self.sizes = sizes
        self.enabled = True
        self._pool = None
        self._graphs: dict[int, _Graph] = {}

    def covers(self, plan: TritonAttention) -> bool:
        return self.enabled and not plan.prefills and 0 < len(plan.decodes) <= self.sizes[-1]

    def run(
        self, ids: list[int], positions: list[int], plan: TritonAttention, rows: list[int]
    ) -> torch.Tensor | None:
        """Logits [len(rows), V] of a decode-only step, or None if no graph could be made."""
        n = len(plan.decodes)
        size = next(s for s in self.sizes if s >= n)
        entry = self._graphs.get(size)
        if entry is None:
            try:
                entry = self._capture(size)
            except Exception:  # a capture failure must not take serving down: run eagerly
                log.exception("CUDA graph capture failed; decode steps run without graphs")
                self.enabled = False
                return None
        entry.plan.refill(plan)
        host = torch.zeros(3, size, dtype=torch.long, pin_memory=True)
        host[0, :n] = torch.tensor(ids)
        host[1, :n] = torch.tensor(positions)
        host[2, : len(rows)] = torch.tensor(rows)
        entry.inputs.copy_(host, non_blocking=True)
        entry.graph.replay()
        return entry.logits[: len(rows)]

    def _capture(self, size: int) -> _Graph:
        device = self.kv.k.device
        hkv, bs = self.kv.k.shape[2], self.kv.block_size
        cap = graph_capacity(size, self.q_per_kv, self.max_blocks)
        sms, longest = sm_count(device), self.max_blocks * bs
        # Splits are fixed at capture; each sequence sizes its own slices in the kernel.
        splits = (
            choose_splits(size * hkv, longest, sms, decode.BLOCK_N),
            choose_splits(triton.cdiv(size * self.q_per_kv, prefix.BLOCK_M) * hkv, longest, sms,
                          prefix.BLOCK_N),
        )  # fmt: skip
        plan = TritonAttention(self.kv, self.scale, self.num_heads, [], [], [], cap, splits)
        plan.upload()  # all padding: the warm-up run below reads and writes no KV
        inputs = torch.zeros(3, size, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self.forward(inputs[0], inputs[1], plan, inputs[2])  # compiles kernels, warms caches
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the event loop's thread may touch CUDA while this one captures.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self.forward(inputs[0], inputs[1], plan, inputs[2])
        self._pool = graph.pool()
        entry = _Graph(graph, inputs, plan, logits)
        self._graphs[size] = entry
        log.info("captured a CUDA graph for decode batches of %d", size)
        return entry
