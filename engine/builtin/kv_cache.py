"""Preallocated paged KV tensors: per layer, `num_blocks * block_size` slots of [Hkv, D]."""

from __future__ import annotations

import torch

from engine.builtin.config import ModelConfig


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (config.num_layers, num_blocks * block_size, config.num_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
        itemsize = torch.empty(0, dtype=dtype).element_size()
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)

    def copy_block(self, src: int, dst: int, num_tokens: int) -> None:
        """Copy the first `num_tokens` slots of block `src` into block `dst`, all layers."""
        bs = self.block_size
        s, d = src * bs, dst * bs
        self.k[:, d : d + num_tokens] = self.k[:, s : s + num_tokens]
        self.v[:, d : d + num_tokens] = self.v[:, s : s + num_tokens]
