"""One step's attention on the Triton path: the model's per-layer Attention callable.

Per layer: write the new K/V into the paged cache, then

    decode rows   paged decode over each row's own blocks      -> partials [S, B, Hq, D]
                  shared-prefix decode, all groups, one launch  -> partials [S', B, Hq, D]
                  one merge folds both into each row's output
    prefill rows  paged causal prefill, all spans, one launch

The metadata (batch.py) is packed on the host once per step and uploaded on the first
layer's call. A CUDA graph keeps one instance per batch size whose metadata buffer is
refilled in place before each replay (`refill`).
"""

from __future__ import annotations

from typing import Protocol

import torch
import triton

from parrot_kernels.triton import decode, prefix
from parrot_kernels.triton.batch import (
    Capacity,
    Decode,
    Group,
    Prefill,
    StepMetadata,
    exact_capacity,
    pack,
    unpack,
)
from parrot_kernels.triton.cache import write_kv
from parrot_kernels.triton.merge import merge_partials
from parrot_kernels.triton.prefill import launch_prefill

MAX_SPLITS = 32


class PagedKV(Protocol):
    k: torch.Tensor  # [layers, num_blocks * block_size, Hkv, D]
    v: torch.Tensor
    block_size: int


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill (a nominal 4 under the CPU interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def choose_splits(programs: int, max_len: int, sms: int, block_n: int) -> int:
    """Enough key splits for ~2 programs per SM, none shorter than 4 key tiles."""
    want = triton.cdiv(2 * sms, max(1, programs))
    most = max(1, triton.cdiv(max_len, 4 * block_n))
    return max(1, min(want, most, MAX_SPLITS))


class TritonAttention:
    """Callable per layer (the model's Attention protocol) for one step; see the module doc."""

    def __init__(
        self,
        kv: PagedKV,
        scale: float,
        num_heads: int,
        decodes: list[Decode],
        groups: list[Group],
        prefills: list[Prefill],
        cap: Capacity | None = None,
        splits: tuple[int, int] | None = None,
    ):
        self.kv = kv
        self.scale = scale
        self.q_per_kv = num_heads // kv.k.shape[2]
        self.decodes = decodes
        self.groups = groups
        self.prefills = prefills
        self.cap = cap or exact_capacity(decodes, groups, prefills, kv.block_size, self.q_per_kv)
        self.splits = splits
        self.flat: torch.Tensor | None = None  # the device buffer ...
        self.meta: StepMetadata | None = None  # ... and its field views, made once per step

    def pack(self, cap: Capacity, pin: bool = False) -> torch.Tensor:
        """This step's metadata laid out for `cap` (host int32)."""
        return pack(
            self.decodes, self.groups, self.prefills, self.kv.block_size, self.q_per_kv, cap, pin
        )

    def upload(self) -> None:
        device = self.kv.k.device
        host = self.pack(self.cap, pin=device.type == "cuda")
        if self.splits is None:
            m = unpack(host, self.cap)
            sms, hkv = sm_count(device), self.kv.k.shape[2]
            dec_len = int(m.dec_lens.max()) if self.cap.decodes else 0
            pre_len = int(m.grp_lens.max()) if self.cap.groups else 0
            self.splits = (
                choose_splits(self.cap.decodes * hkv, dec_len, sms, decode.BLOCK_N),
                choose_splits(self.cap.tiles * hkv, pre_len, sms, prefix.BLOCK_N),
            )
        self.flat = host.to(device, non_blocking=True)
        self.meta = unpack(self.flat, self.cap)

    def refill(self, step: TritonAttention) -> None:
        """Load another step's metadata into this instance's buffer (same capacity)."""
        assert self.flat is not None
        self.flat.copy_(step.pack(self.cap, pin=self.flat.is_cuda), non_blocking=True)

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        if self.meta is None:
            self.upload()
        m, cap, (dec_splits, pre_splits) = self.meta, self.cap, self.splits
        assert q.shape[0] == cap.tokens, "the batch does not match the step's metadata"
        k_flat, v_flat = self.kv.k[layer], self.kv.v[layer]
        bs = self.kv.block_size
        write_kv(k_flat, v_flat, m.slots, k, v)
        out = torch.empty_like(q)
        nd = cap.decodes
        if nd:
            shape = (nd, q.shape[1], q.shape[2])
            parts = q.new_empty(dec_splits, *shape, dtype=torch.float32)
            parts_lse = q.new_empty(dec_splits, *shape[:2], dtype=torch.float32)
            decode.launch_decode(
                q[:nd], k_flat, v_flat, bs, m.dec_tables, m.dec_lens, self.scale, parts, parts_lse
            )
            extra = None
            if cap.tiles:
                pre = q.new_empty(pre_splits, *shape, dtype=torch.float32)
                pre_lse = q.new_empty(pre_splits, *shape[:2], dtype=torch.float32)
                prefix.launch_prefix(
                    q,
                    k_flat,
                    v_flat,
                    bs,
                    m.grp_tables,
                    m.grp_lens,
                    m.members,
                    m.grp_tiles,
                    self.scale,
                    pre,
                    pre_lse,
                )
                extra = (pre, pre_lse, m.row_member)
            merge_partials(parts, parts_lse, out[:nd], None, extra)
        if cap.pf_tiles:
            launch_prefill(
                q, k_flat, v_flat, bs, m.pf_tables, m.pf_spans, m.pf_tiles, self.scale, out
            )
        return out
