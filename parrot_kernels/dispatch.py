"""Chooses the attention path by device: torch ops on CPU (parrot_kernels.cpu), Triton on CUDA.

Triton is imported only when a CUDA path is built, so CPU installs never need it.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from parrot_kernels.triton.graphs import DecodeGraphs, Forward
    from parrot_kernels.triton.step import PagedKV, TritonAttention


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def check_device(device: str | torch.device) -> None:
    """Raise a clear error when the builtin engine cannot run on `device`."""
    kind = torch.device(device).type
    if kind == "cpu":
        return
    if kind != "cuda":
        raise ValueError(f"unsupported device '{device}': the builtin engine runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device '{device}' was requested but torch {torch.__version__} sees no CUDA "
            "device (a CPU-only torch build, or no GPU visible)"
        )
    if not triton_available():
        raise RuntimeError(
            "the CUDA path needs Triton: pip install 'parrot-serve[gpu]' (or pip install triton)"
        )


def triton_attention(
    kv: PagedKV,
    scale: float,
    num_heads: int,
    decodes: list[tuple[list[int], int]],
    groups: list[tuple[list[int], int]],
    prefills: list[tuple[list[int], int, int]],
) -> TritonAttention:
    """The per-layer attention of one step on the Triton path (parrot_kernels/triton/step.py)."""
    from parrot_kernels.triton.step import TritonAttention

    return TritonAttention(kv, scale, num_heads, decodes, groups, prefills)


def decode_graphs(
    forward: Forward, kv: PagedKV, scale: float, num_heads: int, max_blocks: int
) -> DecodeGraphs | None:
    """CUDA graphs for decode steps on a CUDA device; None elsewhere."""
    if kv.k.device.type != "cuda":
        return None
    from parrot_kernels.triton.graphs import DecodeGraphs

    return DecodeGraphs(forward, kv, scale, num_heads, max_blocks)
