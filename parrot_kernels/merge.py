"""Exact merge of partial attention states computed over disjoint key ranges.

Softmax attention over keys A ∪ B equals the two partial results re-weighted by their
log-sum-exps:  out = (e^{lse_a} out_a + e^{lse_b} out_b) / (e^{lse_a} + e^{lse_b}).
"""

from __future__ import annotations

import torch


def merge_attention_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """out_* [..., H, D], lse_* [..., H] (float32). An empty range has lse = -inf."""
    lse = torch.logaddexp(lse_a, lse_b)
    # exp(-inf - -inf) is nan; a range that is empty on both sides cannot happen for a
    # query (it always sees itself), so only guard the one-sided case.
    w_a = torch.exp(lse_a - lse).nan_to_num(0.0).unsqueeze(-1)
    w_b = torch.exp(lse_b - lse).nan_to_num(0.0).unsqueeze(-1)
    out = out_a.float() * w_a + out_b.float() * w_b
    return out.to(out_a.dtype), lse
