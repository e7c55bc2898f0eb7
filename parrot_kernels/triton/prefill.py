"""Prefill attention over paged KV: a chunk of new tokens attends to its whole context.

The chunk's keys (cached context plus the chunk itself, already written to the cache) are
read through the block table; no KV is gathered. Rows fold (token, head-in-group) pairs so
one K/V tile serves all G query heads of its KV head, and the causal mask is aligned to the
bottom right: the chunk's token t sits at position kv_len - q_len + t.

    rows of a tile:  r = 0 .. BLOCK_M-1  ->  token t0 + r // G,  query head kvh * G + r % G

    keys:  [ cached context ......... | chunk t0 .. t0+T-1 | later chunk tokens ]
                all visible              causal triangle      never read

Many spans (sequences) go in one launch: tile i is (span tile_span[i], first token
tile_t0[i]). Why not torch SDPA on gathered blocks: a chunk with cached context has
Lq < Lk, which needs an explicit mask, and a masked SDPA call leaves the flash backend;
gathering would also copy the whole context per layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from parrot_kernels.triton.tiles import LOG2E, attend_keys, block_d, dot_precision, finish

BLOCK_M = 64
BLOCK_N = 64


@triton.jit
def _prefill_kernel(
    q,
    stride_qt,
    stride_qh,
    k_cache,
    v_cache,
    stride_slot,
    stride_kh,
    tables,
    stride_tp,
    q_start,
    q_len,
    kv_len,
    tile_span,
    tile_t0,
    block_size,
    out,
    stride_ot,
    stride_oh,
    q_per_kv,
    tokens_per_tile,
    head_dim,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    span = tl.load(tile_span + tile)
    t0 = tl.load(tile_t0 + tile)
    n = tl.load(q_len + span)
    total = tl.load(kv_len + span)
    first_row = tl.load(q_start + span)

    r = tl.arange(0, BLOCK_M)
    t = t0 + r // q_per_kv
    row_ok = (r < tokens_per_tile * q_per_kv) & (t < n)
    heads = kvh * q_per_kv + r % q_per_kv
    pos = total - n + t
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    mask = row_ok[:, None] & d_ok[None, :]
    tok = (first_row + t).to(tl.int64)
    qt = tl.load(
        q + tok[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask,
        other=0.0,
    )
    # Keys past the tile's last token are masked for every row: stop there.
    hi = total - n + tl.minimum(t0 + tokens_per_tile, n)

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
        tables + span.to(tl.int64) * stride_tp,
        block_size,
        0,
        hi,
        pos,
        qk_scale,
        head_dim,
        BLOCK_N,
        BLOCK_D,
        True,
        DOT_PREC,
    )
    res, _ = finish(acc, m_i, l_i)
    o_ptr = out + tok[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptr, res, mask=mask)


def _block_m(q_per_kv: int) -> int:
    return max(BLOCK_M, triton.next_power_of_2(q_per_kv))


def tokens_per_tile(q_per_kv: int) -> int:
    return _block_m(q_per_kv) // q_per_kv


def prefill_tiles(q_lens: list[int], q_per_kv: int) -> list[tuple[int, int]]:
    """(span, first token) of every tile of every span."""
    step = tokens_per_tile(q_per_kv)
    return [(s, t0) for s, n in enumerate(q_lens) for t0 in range(0, n, step)]


def launch_prefill(
    q: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    block_size: int,
    tables: torch.Tensor,
    spans: torch.Tensor,
    tiles: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    block_n: int = BLOCK_N,
) -> None:
    """q/out [T, Hq, D] (flat batch); tables [P, W] int32; spans [3, P] int32 (first row in
    q, number of new tokens, context length incl. them); tiles [2, N] int32 (span, t0)."""
    if tiles.shape[1] == 0:
        return
    hkv, d = k_flat.shape[1], k_flat.shape[2]
    q_per_kv = q.shape[1] // hkv
    assert q.stride(2) == 1 and out.stride(2) == 1 and k_flat.stride(2) == 1
    assert k_flat.stride() == v_flat.stride()
    _prefill_kernel[(tiles.shape[1], hkv)](
        q, q.stride(0), q.stride(1),
        k_flat, v_flat, k_flat.stride(0), k_flat.stride(1),
        tables, tables.stride(0), spans[0], spans[1], spans[2], tiles[0], tiles[1], block_size,
        out, out.stride(0), out.stride(1),
        q_per_kv, tokens_per_tile(q_per_kv), d, scale * LOG2E,
        BLOCK_M=_block_m(q_per_kv),
        BLOCK_N=block_n,
        BLOCK_D=block_d(d),
        DOT_PREC=dot_precision(q.dtype),
    )  # fmt: skip


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    kv_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    block_n: int = BLOCK_N,
) -> torch.Tensor:
    """q [Lq, Hq, D] are the last Lq of `kv_len` positions in block table `table`; caches
    [num_blocks, block_size, Hkv, D]. Returns out [Lq, Hq, D]."""
    lq, hq, d = q.shape
    hkv, dev = k_cache.shape[2], q.device
    tiles = prefill_tiles([lq], hq // hkv)
    out = torch.empty_like(q) if out is None else out
    launch_prefill(
        q,
        k_cache.view(-1, hkv, d),
        v_cache.view(-1, hkv, d),
        k_cache.shape[1],
        table.to(torch.int32).view(1, -1),
        torch.tensor([[0], [lq], [kv_len]], dtype=torch.int32, device=dev),
        torch.tensor(tiles, dtype=torch.int32, device=dev).t().contiguous(),
        scale,
        out,
        block_n,
    )
    return out
