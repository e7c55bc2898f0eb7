"""Exact merge of partial attention states (out, lse) over disjoint key ranges, in Triton.

One program per (row, head) folds any number of partial states with a running max, the
same identity as parrot_kernels/merge.py:

    out = Σ_s e^{lse_s} out_s / Σ_s e^{lse_s},   lse = log Σ_s e^{lse_s}

A row's states come from two sources: the splits of the row's own decode attention
(`parts` [S, R, H, D]) and, for rows in a shared-prefix group, the splits of the group's
prefix attention (`extra` [S', M, H, D], found through index[row] = member, -1 for none).
Empty ranges carry lse = -inf and drop out; a row with no state at all gets out 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from parrot_kernels.triton.tiles import block_d


@triton.jit
def _fold(acc, m, total, lse_s, out_s):
    m_new = tl.maximum(m, lse_s)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    w = tl.exp(lse_s - m_safe)
    return acc * alpha + out_s * w, m_new, total * alpha + w


@triton.jit
def _merge_kernel(
    a_out,
    a_sp,
    a_rp,
    a_hp,
    a_lse,
    a_ls,
    a_lr,
    num_a,
    b_out,
    b_sp,
    b_rp,
    b_hp,
    b_lse,
    b_ls,
    b_lr,
    num_b,
    b_index,
    out,
    o_rp,
    o_hp,
    lse,
    l_rp,
    head_dim,
    HAS_B: tl.constexpr,
    HAS_LSE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    m = tl.full([], float("-inf"), dtype=tl.float32)
    total = tl.zeros([], dtype=tl.float32)
    for s in range(num_a):
        x = tl.load(a_lse + s * a_ls + row * a_lr + h)
        o = tl.load(a_out + s * a_sp + row * a_rp + h * a_hp + offs_d, mask=d_ok, other=0.0)
        acc, m, total = _fold(acc, m, total, x, o)
    if HAS_B:
        member = tl.load(b_index + row)
        count = tl.where(member >= 0, num_b, 0)
        member = tl.maximum(member, 0)
        for s in range(count):
            x = tl.load(b_lse + s * b_ls + member * b_lr + h)
            o = tl.load(b_out + s * b_sp + member * b_rp + h * b_hp + offs_d, mask=d_ok, other=0.0)
            acc, m, total = _fold(acc, m, total, x, o)
    empty = total == 0.0
    safe = tl.where(empty, 1.0, total)
    tl.store(out + row * o_rp + h * o_hp + offs_d, acc / safe, mask=d_ok)
    if HAS_LSE:
        tl.store(lse + row * l_rp + h, tl.where(empty, float("-inf"), m + tl.log(safe)))


def merge_partials(
    parts: torch.Tensor,
    parts_lse: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None = None,
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """parts [S, R, H, D] + parts_lse [S, R, H] -> out [R, H, D] (any float dtype), lse [R, H].

    `extra` = (parts' [S', M, H, D], lse' [S', M, H], index [R] int32) adds member
    index[r]'s states to row r (skipped where index[r] < 0).
    """
    _, rows, heads, d = parts.shape
    if rows == 0:
        return
    assert parts.stride(3) == 1 and out.stride(2) == 1
    b_out, b_lse, b_index = extra if extra is not None else (parts, parts_lse, parts_lse)
    _merge_kernel[(rows, heads)](
        parts, parts.stride(0), parts.stride(1), parts.stride(2),
        parts_lse, parts_lse.stride(0), parts_lse.stride(1), parts.shape[0],
        b_out, b_out.stride(0), b_out.stride(1), b_out.stride(2),
        b_lse, b_lse.stride(0), b_lse.stride(1), b_out.shape[0], b_index,
        out, out.stride(0), out.stride(1),
        lse if lse is not None else out, lse.stride(0) if lse is not None else 0,
        d,
        HAS_B=extra is not None,
        HAS_LSE=lse is not None,
        BLOCK_D=block_d(d),
    )  # fmt: skip


def merge_attention_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as parrot_kernels.merge.merge_attention_states.

    out_* [N, H, D], lse_* [N, H].
    """
    out = torch.empty_like(out_a)
    lse = torch.empty_like(lse_a, dtype=torch.float32)
    index = torch.arange(out_a.shape[0], dtype=torch.int32, device=out_a.device)
    b = (out_b.unsqueeze(0), lse_b.unsqueeze(0), index)
    merge_partials(out_a.unsqueeze(0), lse_a.unsqueeze(0), out, lse, b)
    return out, lse
