"""Shared-prefix decode attention: a group's decode queries against one prefix, read once.

The queries of every member of a group, all G query heads of one KV head each, are the
rows of one matrix; the prefix's KV is the other. A program takes one tile of BLOCK_M rows
and one split of the prefix, so the prefix's KV is read once per row tile instead of once
per sequence (batch 64 with G = 4 is 256 rows: 2 to 4 reads of the prefix, not 64):

                        prefix positions (the group's block table) ->
                        split 0          split 1          split 2
                    +----------------+----------------+--------------+
    tile 0: rows    | program        | program        | program      |
    m0.h0 m0.h1 ..  | (t0, kvh, s0)  | (t0, kvh, s1)  | (t0, kvh, s2)|  each writes a partial
    m1.h0 .. m15.h3 +----------------+----------------+--------------+  (out, lse) for its rows;
    tile 1: rows    | (t1, kvh, s0)  | (t1, kvh, s1)  | (t1, kvh, s2)|  merge.py folds them into
    m16.h0 ..       +----------------+----------------+--------------+  each row's suffix state

    row r of a group's rows = (member r // G, query head kvh * G + r % G)

Many groups go in one launch: tile t covers flattened rows [tile_lo[t], tile_hi[t]) of
group tile_group[t]; rows[m] is member m's row in q. An empty tile (lo == hi, padding in a
CUDA graph) reads nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from parrot_kernels.triton.merge import merge_partials
from parrot_kernels.triton.tiles import LOG2E, attend_keys, block_d, dot_precision, finish

BLOCK_M = 64
BLOCK_N = 64


@triton.jit
def _prefix_kernel(
    q,
    stride_qb,
    stride_qh,
    k_cache,
    v_cache,
    stride_slot,
    stride_kh,
    tables,
    stride_tg,
    prefix_lens,
    rows,
    tile_group,
    tile_lo,
    tile_hi,
    block_size,
    part_out,
    stride_ps,
    stride_pm,
    stride_ph,
    part_lse,
    stride_ls,
    stride_lm,
    q_per_kv,
    head_dim,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    gid = tl.load(tile_group + tile)
    r_lo = tl.load(tile_lo + tile)
    r_hi = tl.load(tile_hi + tile)
    length = tl.load(prefix_lens + gid, mask=r_hi > r_lo, other=0)
    chunk = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)

    r = r_lo + tl.arange(0, BLOCK_M)
    row_ok = r < r_hi
    member = r // q_per_kv
    heads = kvh * q_per_kv + r % q_per_kv
    b = tl.load(rows + member, mask=row_ok, other=0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    mask = row_ok[:, None] & d_ok[None, :]
    qt = tl.load(
        q + b[:, None] * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask,
        other=0.0,
    )

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
        tables + gid.to(tl.int64) * stride_tg,
        block_size,
        lo,
        hi,
        r,
        qk_scale,
        head_dim,
        BLOCK_N,
        BLOCK_D,
        False,
        DOT_PREC,
    )
    out, lse = finish(acc, m_i, l_i)
    o_ptr = part_out + split * stride_ps + member[:, None] * stride_pm + heads[:, None] * stride_ph
    tl.store(o_ptr + offs_d[None, :], out, mask=mask)
    tl.store(part_lse + split * stride_ls + member * stride_lm + heads, lse, mask=row_ok)


def prefix_tiles(
    group_sizes: list[int], q_per_kv: int, block_m: int = BLOCK_M
) -> list[tuple[int, int, int]]:
    """(group id, first row, end row) per tile; members of group i follow those of i - 1."""
    tiles, member = [], 0
    for gid, n in enumerate(group_sizes):
        lo, end = member * q_per_kv, (member + n) * q_per_kv
        tiles.extend((gid, r, min(r + block_m, end)) for r in range(lo, end, block_m))
        member += n
    return tiles


def launch_prefix(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    block_size: int,
    tables: torch.Tensor,
    prefix_lens: torch.Tensor,
    rows: torch.Tensor,
    tiles: torch.Tensor,
    scale: float,
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    block_n: int = BLOCK_N,
) -> None:
    """q [B, Hq, D]; tables [NG, Wp] int32; prefix_lens [NG]; rows [M] (q row per member);
    tiles [3, T] int32 (group, lo, hi). Writes part_out [S, M, Hq, D], part_lse [S, M, Hq]."""
    num_tiles = tiles.shape[1]
    if num_tiles == 0:
        return
    hkv, d = k_flat.shape[1], k_flat.shape[2]
    assert q.stride(2) == 1 and k_flat.stride(2) == 1 and part_out.stride(3) == 1
    assert k_flat.stride() == v_flat.stride()
    _prefix_kernel[(num_tiles, hkv, part_out.shape[0])](
        q, q.stride(0), q.stride(1),
        k_flat, v_flat, k_flat.stride(0), k_flat.stride(1),
        tables, tables.stride(0), prefix_lens, rows, tiles[0], tiles[1], tiles[2], block_size,
        part_out, part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse, part_lse.stride(0), part_lse.stride(1),
        q.shape[1] // hkv, d, scale * LOG2E,
        BLOCK_M=BLOCK_M,
        BLOCK_N=block_n,
        BLOCK_D=block_d(d),
        DOT_PREC=dot_precision(q.dtype),
    )  # fmt: skip


def shared_prefix_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    prefix_len: int,
    scale: float,
    num_splits: int = 1,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    block_n: int = BLOCK_N,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query q [N, Hq, D] sees the first `prefix_len` keys of block table `table`.

    Caches [num_blocks, block_size, Hkv, D]. Returns out [N, Hq, D], lse [N, Hq] float32.
    """
    n, hq, d = q.shape
    dev = q.device
    hkv = k_cache.shape[2]
    tiles = prefix_tiles([n], hq // hkv)
    part_out = q.new_empty(num_splits, n, hq, d, dtype=torch.float32)
    part_lse = q.new_empty(num_splits, n, hq, dtype=torch.float32)
    launch_prefix(
        q,
        k_cache.view(-1, hkv, d),
        v_cache.view(-1, hkv, d),
        k_cache.shape[1],
        table.to(torch.int32).view(1, -1),
        torch.tensor([prefix_len], dtype=torch.int32, device=dev),
        torch.arange(n, dtype=torch.int32, device=dev),
        torch.tensor(tiles, dtype=torch.int32, device=dev).t().contiguous(),
        scale,
        part_out,
        part_lse,
        block_n,
    )
    out = torch.empty_like(q) if out is None else out
    lse = q.new_empty(n, hq, dtype=torch.float32) if lse is None else lse
    merge_partials(part_out, part_lse, out, lse)
    return out, lse
