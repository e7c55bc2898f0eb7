"""A layer's small ops (RMSNorm, rotary embedding, SwiGLU product): torch ops, or the C
kernels on CPU (parrot_kernels/native.py), behind one interface the model calls.

Both compute the same functions; the C path rounds to bf16 once per op where torch rounds
after each of its steps, and it uses float32 cos/sin tables where torch uses bf16 ones, so
the two agree to within bf16 rounding (tests/engine/test_layer_ops.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from engine.builtin.config import ModelConfig
from parrot_kernels import native

# qkv [T, W] (q heads then k heads then v heads per row) -> rotated q|k [T, Hq + Hkv, D].
Rotation = Callable[[torch.Tensor], torch.Tensor]


def rope_angles(config: ModelConfig) -> torch.Tensor:
    """Rotate-half RoPE angles, float64 [context_length, head_dim / 2]."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    return torch.outer(torch.arange(config.context_length, dtype=torch.float64), inv_freq)


class LayerOps(Protocol):
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [T, H] -> x / rms(x) * weight."""

    def rotation(self, positions: torch.Tensor) -> Rotation:
        """The step's rotary embedding for tokens at `positions` [T], applied per layer."""

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[T, 2N] holding gate then up -> silu(gate) * up, [T, N]."""


class TorchLayerOps:
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device):
        self.heads = config.num_heads + config.num_kv_heads
        self.head_dim = config.head_dim
        # rope(x) = x * [cos, cos] + roll(x, D/2) * [-sin, sin]: one fused multiply-add.
        angles = rope_angles(config)
        cos, sin = angles.cos(), angles.sin()
        self._cos = torch.cat((cos, cos), -1).to(device, dtype)
        self._sin = torch.cat((-sin, sin), -1).to(device, dtype)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return F.rms_norm(x, weight.shape, weight, eps)

    def rotation(self, positions: torch.Tensor) -> Rotation:
        cos = self._cos[positions].unsqueeze(1)
        sin = self._sin[positions].unsqueeze(1)
        heads, d = self.heads, self.head_dim

        def rotate(qkv: torch.Tensor) -> torch.Tensor:
            qk = qkv[:, : heads * d].view(qkv.shape[0], heads, d)
            return torch.addcmul(qk * cos, qk.roll(d // 2, dims=-1), sin)

        return rotate

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)


class NativeLayerOps:
    """The C kernels: rotation happens in place in the qkv projection's output, which no
    one else holds."""

    def __init__(self, kernels: native.LayerOps, config: ModelConfig):
        self.kernels = kernels
        self.heads = config.num_heads + config.num_kv_heads
        self.head_dim = config.head_dim
        angles = rope_angles(config)
        self._cos = angles.cos().float().contiguous()
        self._sin = angles.sin().float().contiguous()

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self.kernels.rms_norm(x, weight, eps)

    def rotation(self, positions: torch.Tensor) -> Rotation:
        positions = positions.contiguous()
        if positions.numel() and int(positions.max()) >= self._cos.shape[0]:
            raise IndexError(f"position {int(positions.max())} is past the rotary table")
        heads, d = self.heads, self.head_dim

        def rotate(qkv: torch.Tensor) -> torch.Tensor:
            self.kernels.rope_(qkv, positions, heads, d, self._cos, self._sin)
            return qkv[:, : heads * d].view(qkv.shape[0], heads, d)

        return rotate

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self.kernels.silu_mul(gate_up)
