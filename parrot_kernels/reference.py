"""Naive attention over paged KV, one sequence at a time: the oracle for every fast path.

Written for clarity, not speed: gather each sequence's KV from its block table, expand
grouped KV heads, softmax in float64.
"""

from __future__ import annotations

import random

import torch


def gather_paged(cache: torch.Tensor, block_table: list[int], length: int) -> torch.Tensor:
    """cache [num_blocks, block_size, kv_heads, dim] -> [length, kv_heads, dim]."""
    block_size = cache.shape[1]
    rows = [cache[b] for b in block_table]
    flat = torch.cat(rows, dim=0) if rows else cache.new_zeros(0, *cache.shape[2:])
    assert flat.shape[0] >= length, "block table too short for the sequence"
    del block_size
    return flat[:length]


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries at the END of the key range (bottom-right causal alignment).

    q [Lq, Hq, D], k/v [Lk, Hkv, D], Lq <= Lk; query i sits at position Lk - Lq + i and sees
    keys 0..that position. Returns out [Lq, Hq, D] and log-sum-exp [Lq, Hq] in float32.
    """
    lq, hq, d = q.shape
    lk, hkv, _ = k.shape
    scale = d**-0.5 if scale is None else scale
    group = hq // hkv
    kx = k.double().repeat_interleave(group, dim=1)
    vx = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), kx) * scale
    pos_q = torch.arange(lk - lq, lk).unsqueeze(1)
    visible = torch.arange(lk).unsqueeze(0) <= pos_q
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("hqk,khd->qhd", probs, vx)
    return out.to(q.dtype), lse.transpose(0, 1).float()


def reference_paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: list[list[int]],
    seq_lens: list[int],
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode query per sequence. q [B, Hq, D]; caches [blocks, block_size, Hkv, D]."""
    outs, lses = [], []
    for i, (table, length) in enumerate(zip(block_tables, seq_lens, strict=True)):
        k = gather_paged(k_cache, table, length)
        v = gather_paged(v_cache, table, length)
        out, lse = reference_attention(q[i : i + 1], k, v, scale)
        outs.append(out[0])
        lses.append(lse[0])
    return torch.stack(outs), torch.stack(lses)


def random_block_tables(
    rng: random.Random, lens: list[int], num_blocks: int, block_size: int
) -> tuple[list[list[int]], torch.Tensor]:
    """Test inputs for the paged paths: each sequence's blocks drawn from a shuffled pool (so
    tables are neither ordered nor contiguous), as lists for the oracle and as one padded
    [B, max blocks] int64 tensor (padding: block 0) for the fast paths."""
    order = list(range(num_blocks))
    rng.shuffle(order)
    tables, at = [], 0
    for n in lens:
        nb = -(-n // block_size)
        tables.append(order[at : at + nb])
        at += nb
    assert at <= num_blocks, "not enough blocks for these lengths"
    padded = torch.zeros(len(lens), max(1, *(len(t) for t in tables)), dtype=torch.long)
    for i, table in enumerate(tables):
        padded[i, : len(table)] = torch.tensor(table, dtype=torch.long)
    return tables, padded
