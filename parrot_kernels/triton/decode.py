"""Paged decode attention: one query per sequence over its own KV blocks, split along keys.

Grid (sequence, KV head, split). A program loads the G query heads that share its KV head
as the rows of one tile, so each K/V row is read once for all G heads (grouped-query
attention without expanding KV). Each split covers a BLOCK_N-aligned slice of the sequence
and writes a partial state (float32 out + lse); merge.py reduces the splits. Splits are
sized per sequence inside the kernel, so one launch serves uneven lengths, and a length of
0 (a padded CUDA-graph row) costs nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from parrot_kernels.triton.merge import merge_partials
from parrot_kernels.triton.tiles import LOG2E, attend_keys, block_d, dot_precision, finish

BLOCK_N = 64


@triton.jit
def _decode_kernel(
    q,
    stride_qb,
    stride_qh,
    k_cache,
    v_cache,
    stride_slot,
    stride_kh,
    tables,
    stride_tb,
    lens,
    block_size,
    part_out,
    stride_ps,
    stride_pb,
    stride_ph,
    part_lse,
    stride_ls,
    stride_lb,
    q_per_kv,
    head_dim,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    length = tl.load(lens + b)
    chunk = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)

    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < q_per_kv
    heads = kvh * q_per_kv + rows
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_ptr = q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    qt = tl.load(q_ptr, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = attend_keys(
        acc,
        m_i,
        l_i,
        qt,
        k_cache + kvh * stride_kh,
        v_cache + kvh * stride_kh,
        stride_slot,
        tables + b.to(tl.int64) * stride_tb,
        block_size,
        lo,
        hi,
        rows,
        qk_scale,
        head_dim,
        BLOCK_N,
        BLOCK_D,
        False,
        DOT_PREC,
    )
    out, lse = finish(acc, m_i, l_i)
    o_ptr = part_out + split * stride_ps + b * stride_pb + heads[:, None] * stride_ph
    tl.store(o_ptr + offs_d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(part_lse + split * stride_ls + b * stride_lb + heads, lse, mask=row_ok)


def launch_decode(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    block_size: int,
    tables: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    block_n: int = BLOCK_N,
) -> None:
    """q [B, Hq, D]; k/v_flat [slots, Hkv, D]; tables [B, W] int32; lens [B] int32.

    Writes partial states part_out [S, B, Hq, D] float32 and part_lse [S, B, Hq]; S (the
    number of splits) is part_out.shape[0].
    """
    num_splits, batch = part_out.shape[0], q.shape[0]
    hkv, d = k_flat.shape[1], k_flat.shape[2]
    q_per_kv = q.shape[1] // hkv
    assert q.stride(2) == 1 and k_flat.stride(2) == 1 and part_out.stride(3) == 1
    assert k_flat.stride() == v_flat.stride()
    _decode_kernel[(batch, hkv, num_splits)](
        q, q.stride(0), q.stride(1),
        k_flat, v_flat, k_flat.stride(0), k_flat.stride(1),
        tables, tables.stride(0), lens, block_size,
        part_out, part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse, part_lse.stride(0), part_lse.stride(1),
        q_per_kv, d, scale * LOG2E,
        BLOCK_M=max(16, triton.next_power_of_2(q_per_kv)),
        BLOCK_N=block_n,
        BLOCK_D=block_d(d),
        DOT_PREC=dot_precision(q.dtype),
    )  # fmt: skip


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    num_splits: int = 1,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    block_n: int = BLOCK_N,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode query per sequence; caches [num_blocks, block_size, Hkv, D] (as reference.py).

    tables [B, W] block ids (padded), lens [B]. Returns out [B, Hq, D] (q's dtype) and
    lse [B, Hq] float32, written into `out`/`lse` when given.
    """
    b, hq, d = q.shape
    bs = k_cache.shape[1]
    k_flat = k_cache.view(-1, *k_cache.shape[2:])
    v_flat = v_cache.view(-1, *v_cache.shape[2:])
    part_out = q.new_empty(num_splits, b, hq, d, dtype=torch.float32)
    part_lse = q.new_empty(num_splits, b, hq, dtype=torch.float32)
    launch_decode(
        q,
        k_flat,
        v_flat,
        bs,
        tables.to(torch.int32),
        lens.to(torch.int32),
        scale,
        part_out,
        part_lse,
        block_n,
    )
    out = torch.empty_like(q) if out is None else out
    lse = q.new_empty(b, hq, dtype=torch.float32) if lse is None else lse
    merge_partials(part_out, part_lse, out, lse)
    return out, lse
