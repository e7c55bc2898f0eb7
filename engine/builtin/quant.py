"""4-bit weight path for small decode batches on CPU.

Decode at batch 1-8 is bound by memory bandwidth: every step streams all weights. The
embedded model's file stores its layer weights as 4-bit groups (GGUF Q4_1: w = d*q + m,
32 weights per group), so the same values fit in a quarter of bf16's bytes. We rebuild
those groups from the dequantised weights and keep them only when the round trip is
exact, i.e. the 4-bit form is the file's own weights, not a new lossy quantisation.
Larger batches are compute-bound and use the bf16 weights instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 32

_mm = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
_pack = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)


@dataclass(slots=True)
class Q4Weight:
    packed: torch.Tensor
    scales_and_zeros: torch.Tensor  # [K / GROUP, N, 2] bf16

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] bf16 -> x @ W.T [M, N] bf16."""
        return _mm(x, self.packed, GROUP, self.scales_and_zeros)


def available(dtype: torch.dtype, device: torch.device) -> bool:
    return (
        _mm is not None and _pack is not None and dtype == torch.bfloat16 and (device.type == "cpu")
    )


def pack_if_exact(weight: torch.Tensor, rtol: float = 1e-6) -> Q4Weight | None:
    """The 4-bit form of `weight` [N, K] (float32) if it represents it exactly, else None."""
    n, k = weight.shape
    if k % GROUP or n % 16:
        return None
    groups = weight.float().view(n, k // GROUP, GROUP)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / 15
    q = torch.round((groups - low) / step.clamp_min(1e-30)).clamp_(0, 15)
    error = (q * step + low - groups).abs().max()
    if error > rtol * groups.abs().max():
        return None
    # The kernel computes (q - 8) * scale + zero, so zero = low + 8 * step.
    scales = step.squeeze(-1).t()
    zeros = (low + 8 * step).squeeze(-1).t()
    sz = torch.stack([scales, zeros], dim=-1).to(torch.bfloat16).contiguous()
    packed = _pack(q.view(n, k).to(torch.int32).contiguous(), 1)
    return Q4Weight(packed, sz)
