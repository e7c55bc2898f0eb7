"""Turns a step's chunks into model inputs and an attention plan, and runs the model."""

from __future__ import annotations

import torch

from engine.builtin.attention import AttentionPlan, device_plan
from engine.builtin.kv_cache import KVCache
from engine.builtin.model import LlamaModel
from engine.builtin.scheduler import Chunk
from kernels import dispatch, native


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        kv: KVCache,
        share_prefixes: bool = True,
        native_attention: bool = True,
    ):
        self.model = model
        self.kv = kv
        self.share_prefixes = share_prefixes
        self.scale = model.config.head_dim**-0.5
        c = model.config
        # CPU decode attention in C where it builds (kernels/native.py); else torch ops.
        self.native = None
        if (
            native_attention
            and model.device.type == "cpu"
            and native.PagedDecode.supports(kv.k.dtype, c.num_heads, c.num_kv_heads, c.head_dim)
        ):
            self.native = native.load()
        # CUDA: Triton attention plans, and graphs for decode-only steps (kernels/dispatch.py).
        self.on_device = model.device.type != "cpu"
        self.graphs = None
        if self.on_device:
            c = model.config
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
        decode_spans = [
            (c.seq.context.block_table, c.seq.context.num_computed + 1) for c in decodes
        ]
        prefill_spans = [
            (c.seq.context.block_table, c.seq.context.num_computed, c.num_tokens) for c in prefills
        ]
        heads = self.model.config.num_heads
        if self.on_device:
            plan = device_plan(
                self.kv, self.scale, heads, decode_spans, prefill_spans, self.share_prefixes
            )
        else:
            plan = AttentionPlan.build(
                self.kv,
                self.scale,
                heads,
                decode_spans,
                prefill_spans,
                self.share_prefixes,
                self.native,
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
