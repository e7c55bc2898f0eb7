"""Turns a step's chunks into model inputs and an attention plan, and runs the model."""

from __future__ import annotations

import functools

import torch

from engine.builtin.attention import AttentionPlan, device_plan
from engine.builtin.kv_cache import KVCache
from engine.builtin.model import LlamaModel
from engine.builtin.scheduler import Chunk
from engine.builtin.threads import AttentionThreads, attention_pairs
from parrot_kernels import dispatch, native


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        kv: KVCache,
        share_prefixes: bool = True,
        native_decode: native.PagedDecode | None = None,
        attention_threads: AttentionThreads | None = None,
        shared_decode: native.SharedDecode | None = None,
    ):
        """`native_decode`: the C decode attention kernel, used where the model's head
        layout allows (CPU only); None keeps torch ops. `shared_decode`: with it, the
        shared-prefix kernel for rows that share a prefix and for short prefill chunks (None:
        the paged kernel reads each row's prefix, torch ops the prefills).
        `attention_threads`: when a step's attention runs on more threads than the rest (CPU
        only; engine/builtin/threads.py)."""
        self.model = model
        self.kv = kv
        self.share_prefixes = share_prefixes
        self.scale = model.config.head_dim**-0.5
        c = model.config
        self.on_device = model.device.type != "cpu"
        self.attention_threads = None if self.on_device else attention_threads
        # The last step's attention work (query-key pairs) and the threads it ran on.
        self.last_attention = (0, 0)
        self.native = None
        if (
            native_decode is not None
            and not self.on_device
            and native.PagedDecode.supports(kv.k.dtype, c.num_heads, c.num_kv_heads, c.head_dim)
        ):
            self.native = native_decode
        self.shared = None
        if (
            self.native is not None
            and shared_decode is not None
            and native.SharedDecode.supports(
                kv.k.dtype, c.num_heads, c.num_kv_heads, c.head_dim, kv.block_size
            )
        ):
            self.shared = shared_decode
        self._build_plan = (
            device_plan
            if self.on_device
            else functools.partial(AttentionPlan.build, native=self.native, shared=self.shared)
        )
        # CUDA: Triton attention plans, and graphs for decode-only steps
        # (parrot_kernels/dispatch.py).
        self.graphs = None
        if self.on_device:
            max_blocks = min(-(-c.context_length // kv.block_size), kv.num_blocks)
            self.graphs = dispatch.decode_graphs(
                model.forward, kv, self.scale, c.num_heads, max_blocks
            )

    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """Compute every chunk; returns logits [S, V] for the sampling chunks, in chunk order."""
        decodes = [c for c in chunks if c.num_tokens == 1]
        prefills = [c for c in chunks if c.num_tokens > 1]
        ids: list[int] = []
        positions: list[int] = []
        row_of: dict[int, int] = {}
        for c in decodes:
            ctx = c.seq.context
            row_of[id(c.seq)] = len(ids)
            ids.append(ctx.token_ids[ctx.num_computed])
            positions.append(ctx.num_computed)
        for c in prefills:
            ctx = c.seq.context
            start, end = ctx.num_computed, ctx.num_computed + c.num_tokens
            ids.extend(ctx.token_ids[start:end])
            positions.extend(range(start, end))
            row_of[id(c.seq)] = len(ids) - 1
        pairs, threads = attention_pairs(chunks), torch.get_num_threads()
        extra = {}
        if self.attention_threads is not None:
            wide = self.attention_threads.for_step(pairs, len(ids), threads)
            if wide is not None:
                extra["threads"] = threads = wide
        self.last_attention = (pairs, threads)
        plan = self._build_plan(
            self.kv,
            self.scale,
            self.model.config.num_heads,
            [(c.seq.context.block_table, c.seq.context.num_computed + 1) for c in decodes],
            [
                (c.seq.context.block_table, c.seq.context.num_computed, c.num_tokens)
                for c in prefills
            ],
            share_prefixes=self.share_prefixes,
            **extra,
        )
        rows = [row_of[id(c.seq)] for c in chunks if c.sample]
        if self.graphs is not None and self.graphs.covers(plan):
            logits = self.graphs.run(ids, positions, plan, rows)
            if logits is not None:
                return logits
        device = self.model.device
        return self.model.forward(
            torch.tensor(ids, device=device),
            torch.tensor(positions, device=device),
            plan,
            torch.tensor(rows, dtype=torch.long, device=device),
        )
