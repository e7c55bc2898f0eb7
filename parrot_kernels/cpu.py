"""Attention over paged KV with torch ops (the CPU path), returning log-sum-exp for merging.

Grouped-query attention never expands KV heads: the query heads that share a KV head are
folded into the query-length axis, so one KV head serves its whole query group.

    q [T, Hq, D] --view--> [T, Hkv, G, D] --permute--> [Hkv, G*T rows, D]  vs  K [Hkv, Lk, D]
"""

from __future__ import annotations

import torch

_fused = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def mask_to_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean 'may attend' mask -> additive bias (0 or -inf). Build once, use per layer."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf")
    )


def causal_bias(lq: int, lk: int, group: int, dtype: torch.dtype) -> torch.Tensor:
    """Bias for the last `lq` of `lk` positions, rows ordered (g, t) as `_fold` lays them."""
    pos = torch.arange(lk - lq, lk).unsqueeze(1)
    mask = (torch.arange(lk).unsqueeze(0) <= pos).repeat(group, 1)
    return mask_to_bias(mask, dtype)[None, None]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hkv, R, D], k/v [B, Hkv, L, D], additive bias broadcastable to [B, Hkv, R, L].

    Returns out [B, Hkv, R, D] (q's dtype) and lse [B, Hkv, R] float32.
    """
    if _fused is not None and q.device.type == "cpu":
        out, lse = _fused(q, k, v, 0.0, False, attn_mask=bias, scale=scale)
        return out, lse.float()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    return torch.matmul(probs, v.float()).to(q.dtype), lse


def _fold(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[B, T, Hq, D] -> [B, Hkv, G*T, D] with rows ordered (g, t)."""
    b, t, hq, d = q.shape
    g = hq // num_kv_heads
    return (
        q.view(b, t, num_kv_heads, g, d).permute(0, 2, 3, 1, 4).reshape(b, num_kv_heads, g * t, d)
    )


def _unfold(x: torch.Tensor, t: int) -> torch.Tensor:
    """Inverse of _fold for outputs [B, Hkv, G*T, D] -> [B, T, Hq, D] (and lse without D)."""
    b, hkv, rows = x.shape[:3]
    g = rows // t
    if x.dim() == 3:
        return x.view(b, hkv, g, t).permute(0, 3, 1, 2).reshape(b, t, hkv * g)
    d = x.shape[3]
    return x.view(b, hkv, g, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, hkv * g, d)


def decode_attention(
    q: torch.Tensor,
    k_blocks: torch.Tensor,
    v_blocks: torch.Tensor,
    tables: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query per sequence over its own KV blocks.

    q [B, Hq, D]; k_blocks/v_blocks [num_blocks, block_size, Hkv, D]; tables [B, nb] block
    ids (padded); bias [B, nb * block_size] additive, -inf past each sequence's length.
    Returns out [B, Hq, D], lse [B, Hq]. Whole blocks are gathered (one index per block,
    not per token), which is several times cheaper than a per-slot gather.
    """
    b, nb = tables.shape
    _, bs, hkv, d = k_blocks.shape
    k = k_blocks.index_select(0, tables.view(-1)).view(b, nb * bs, hkv, d).transpose(1, 2)
    v = v_blocks.index_select(0, tables.view(-1)).view(b, nb * bs, hkv, d).transpose(1, 2)
    out, lse = attend(_fold(q.unsqueeze(1), hkv), k, v, bias[:, None, None, :], scale)
    return _unfold(out, 1)[:, 0], _unfold(lse, 1)[:, 0]


def prefix_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query sees every key (a shared prefix, read once for the whole group).

    q [N, Hq, D] (N sequences' decode queries stacked); k/v [Lp, Hkv, D].
    """
    hkv = k.shape[1]
    qf = _fold(q.unsqueeze(0), hkv)  # [1, Hkv, G*N, D]
    out, lse = attend(
        qf, k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0), None, scale
    )
    return _unfold(out, q.shape[0])[0], _unfold(lse, q.shape[0])[0]


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prefill chunk: q [Lq, Hq, D] are the LAST Lq positions of k/v [Lk, Hkv, D].

    `bias` may be passed precomputed (`causal_bias`) to build it once for all layers.
    """
    lq, lk, hkv = q.shape[0], k.shape[0], k.shape[1]
    if bias is None:
        bias = causal_bias(lq, lk, q.shape[1] // hkv, q.dtype)
    out, _ = attend(
        _fold(q.unsqueeze(0), hkv),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        bias,
        scale,
    )
    return _unfold(out, lq)[0]
