"""The inner loop every Triton attention kernel shares: online softmax over paged keys.

A program holds a tile of query rows in registers and walks key positions [lo, hi) of one
block table, BLOCK_N positions at a time, gathering K/V row by row through the table:

    position p ──> block = table[p // block_size] ──> slot = block * block_size + p % block_size

so a key tile need not line up with KV blocks, any block size works, and a block table may
list its blocks in any order. Scores use base 2 (qk_scale already holds log2(e)); the
log-sum-exp handed back is natural-log, like the torch paths and parrot_kernels/merge.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr):
    if DOT_PREC == "upcast":
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=DOT_PREC)
    return c


@triton.jit
def attend_keys(
    acc,
    m_i,
    l_i,
    q,
    k_head,
    v_head,
    stride_slot,
    table,
    block_size,
    lo,
    hi,
    limit,
    qk_scale,
    head_dim,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Fold keys [lo, hi) into the running state (acc [M, D], row max m_i, row sum l_i).

    q [M, D] is in the cache's dtype; k_head/v_head point at slot 0 of one KV head; with
    CAUSAL, row r sees only positions <= limit[r].
    """
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    for start in range(lo, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        ok = pos < hi
        block = tl.load(table + pos // block_size, mask=ok, other=0).to(tl.int64)
        slot = block * block_size + pos % block_size
        offs = slot[:, None] * stride_slot + offs_d[None, :]
        kv_ok = ok[:, None] & d_ok[None, :]
        k = tl.load(k_head + offs, mask=kv_ok, other=0.0)
        v = tl.load(v_head + offs, mask=kv_ok, other=0.0)
        s = _dot(q, tl.trans(k), DOT_PREC) * qk_scale
        visible = ok[None, :]
        if CAUSAL:
            visible = visible & (pos[None, :] <= limit[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen only masked keys keeps max -inf; exponentiate against 0 so
        # it contributes exp2(-inf) = 0 instead of nan.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def finish(acc, m_i, l_i):
    """Running state -> (normalised out, natural-log lse); a row that saw no key gets 0, -inf."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * LN2)
    return out, lse


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs (tests) multiply exactly; bf16/fp16 ignore the setting on a GPU.

    Triton's CPU interpreter multiplies bf16 blocks as their raw 16-bit patterns (numpy has
    no bf16), so there the operands, already rounded to bf16, are multiplied in fp32: the
    same products a GPU's bf16 tensor cores accumulate in fp32.
    """
    if dtype == torch.bfloat16 and triton.knobs.runtime.interpret:
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))
