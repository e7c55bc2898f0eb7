"""Kernel-level GPU timing for `parrot bench gpu`: shared-prefix decode attention three ways.

One layer of paged KV holds a shared prefix of whole blocks plus each sequence's private
tail, blocks shuffled. The same decode step is timed as (1) the shared-prefix kernel plus
per-sequence suffixes and merge, (2) per-sequence paged attention over whole tables, and
(3) torch SDPA on K/V gathered into padded dense tensors. L2 is flushed before each call,
since one layer's prefix KV (16 MiB for 4k tokens of the 8B shape) would otherwise stay
cached across calls, which no real model with one KV per layer enjoys.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from parrot_kernels.triton.prefix import BLOCK_M
from parrot_kernels.triton.step import TritonAttention

GB = 1e9


def timed(fn: Callable[[], object], iters: int = 20, flush: torch.Tensor | None = None) -> float:
    """Median seconds per call on the GPU; `flush` is rewritten first so L2 starts cold."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if flush is not None:
            flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write): the floor's yardstick."""
    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.nbytes / timed(lambda: dst.copy_(src))


def paged_batch(batch: int, prefix_len: int, max_private: int, hkv: int, d: int, bs: int = 16):
    """(KV of one layer, decodes as (block table, length)) with a shared prefix, shuffled."""
    rng = random.Random(batch)
    private = [rng.randint(0, max_private) for _ in range(batch)]
    own = [-(-(p + 1) // bs) for p in private]  # + the token being decoded
    shared = prefix_len // bs
    order = list(range(shared + sum(own)))
    rng.shuffle(order)
    decodes, at = [], shared
    for p, n in zip(private, own, strict=True):
        decodes.append((order[:shared] + order[at : at + n], shared * bs + p + 1))
        at += n
    k = torch.randn(1, len(order) * bs, hkv, d, dtype=torch.bfloat16, device="cuda")
    return SimpleNamespace(k=k, v=torch.randn_like(k), block_size=bs), decodes


def decode_row(
    batch: int, prefix_len: int, max_private: int, hq: int, hkv: int, d: int, bandwidth: float
) -> dict:
    """Times (seconds), achieved GB/s and share of copy bandwidth for each method."""
    bs = 16
    kv, decodes = paged_batch(batch, prefix_len, max_private, hkv, d, bs)
    plen, lens = prefix_len // bs * bs, [n for _, n in decodes]
    q = torch.randn(batch, hq, d, dtype=torch.bfloat16, device="cuda")
    new = torch.randn(batch, hkv, d, dtype=torch.bfloat16, device="cuda")
    shared = TritonAttention(kv, d**-0.5, hq, decodes, [(list(range(batch)), plen // bs)], [])
    per_seq = TritonAttention(kv, d**-0.5, hq, decodes, [], [])
    diff = (shared(0, q, new, new) - per_seq(0, q, new, new)).abs().max()
    lmax = max(lens)
    slots = torch.zeros(batch, lmax, dtype=torch.long)
    for i, (table, n) in enumerate(decodes):
        pos = torch.arange(n)
        slots[i, :n] = torch.tensor(table)[pos // bs] * bs + pos % bs
    slots = slots.cuda()
    mask = (torch.arange(lmax) < torch.tensor(lens).unsqueeze(1)).cuda()[:, None, None, :]

    def gather() -> tuple[torch.Tensor, torch.Tensor]:  # -> padded [B, Hkv, Lmax, D]
        return kv.k[0][slots].transpose(1, 2), kv.v[0][slots].transpose(1, 2)

    def sdpa(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, enable_gqa=True)

    gathered = gather()
    private = sum(lens) - batch * plen
    tiles = -(-batch * (hq // hkv) // BLOCK_M)  # row tiles: reads of the prefix per KV head
    cases = {  # name: (call, tokens of KV it reads)
        "shared_prefix": (lambda: shared(0, q, new, new), plen * tiles + private),
        "per_sequence": (lambda: per_seq(0, q, new, new), sum(lens)),
        "sdpa_gathered": (lambda: sdpa(*gathered), batch * lmax),
        "gather_plus_sdpa": (lambda: sdpa(*gather()), 3 * batch * lmax),  # read, write, read
    }
    flush = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB: more than any L2
    token_bytes = 2 * hkv * d * 2  # K and V of one token in one layer, bf16
    row = {"batch": batch, "prefix": plen, "private_mean": private / batch,
           "max_abs_diff_shared_vs_per_seq": float(diff)}  # fmt: skip
    for name, (fn, tokens) in cases.items():
        t = timed(fn, flush=flush)
        gbps = tokens * token_bytes / t / GB
        row[name] = {"s": t, "GBps": gbps, "of_copy_bw": gbps * GB / bandwidth}
    row["speedup_vs_per_sequence"] = row["per_sequence"]["s"] / row["shared_prefix"]["s"]
    return row
