"""Writes a step's new K/V rows into their paged-cache slots; slot -1 means 'skip the row'.

A CUDA graph replays a fixed batch size, so padded rows still run: they carry slot -1 and
write nothing (an index_copy_ would need a real slot to scribble on).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    k_new,
    stride_kt,
    stride_kh,
    v_new,
    stride_vt,
    stride_vh,
    k_cache,
    v_cache,
    stride_slot,
    stride_ch,
    slots,
    num_heads,
    head_dim,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slots + t).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    heads = tl.where(slot >= 0, num_heads, 0)  # slot -1: an all-false mask
    mask = (h < heads)[:, None] & (d < head_dim)[None, :]
    t64 = t.to(tl.int64)
    k_src = k_new + t64 * stride_kt + h[:, None] * stride_kh + d[None, :]
    v_src = v_new + t64 * stride_vt + h[:, None] * stride_vh + d[None, :]
    dst = slot * stride_slot + h[:, None] * stride_ch + d[None, :]
    tl.store(k_cache + dst, tl.load(k_src, mask=mask), mask=mask)
    tl.store(v_cache + dst, tl.load(v_src, mask=mask), mask=mask)


def write_kv(
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    slots: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """k/v [T, Hkv, D] -> k/v_flat[slots[t]] for every t with slots[t] >= 0 (slots int32)."""
    t, hkv, d = k.shape
    if t == 0:
        return
    assert k.stride(2) == 1 and v.stride(2) == 1
    assert k_flat.stride() == v_flat.stride() and k_flat.stride(2) == 1
    _write_kv_kernel[(t,)](
        k, k.stride(0), k.stride(1), v, v.stride(0), v.stride(1),
        k_flat, v_flat, k_flat.stride(0), k_flat.stride(1),
        slots, hkv, d,
        BLOCK_H=triton.next_power_of_2(hkv),
        BLOCK_D=triton.next_power_of_2(d),
    )  # fmt: skip
