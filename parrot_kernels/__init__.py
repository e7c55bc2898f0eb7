"""Attention kernels: torch reference (the oracle), CPU path, Triton GPU path."""
