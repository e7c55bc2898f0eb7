"""Turns a step's chunks into model inputs and an attention plan, and runs the model."""

from __future__ import annotations

import torch

from engine.builtin.attention import AttentionPlan
from engine.builtin.kv_cache import KVCache
from engine.builtin.model import LlamaModel
from engine.builtin.scheduler import Chunk


class ModelRunner:
    def __init__(self, model: LlamaModel, kv: KVCache, share_prefixes: bool = True):
        self.model = model
        self.kv = kv
        self.share_prefixes = share_prefixes
        self.scale = model.config.head_dim**-0.5

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
        plan = AttentionPlan.build(
            self.kv,
            self.scale,
            self.model.config.num_heads,
            [(c.seq.context.block_table, c.seq.context.num_computed + 1) for c in decodes],
            [
                (c.seq.context.block_table, c.seq.context.num_computed, c.num_tokens)
                for c in prefills
            ],
            share_prefixes=self.share_prefixes,
        )
        rows = [row_of[id(c.seq)] for c in chunks if c.sample]
        device = self.model.device
        return self.model.forward(
            torch.tensor(ids, device=device),
            torch.tensor(positions, device=device),
            plan,
            torch.tensor(rows, dtype=torch.long, device=device),
        )
