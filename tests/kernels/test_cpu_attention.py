"""The torch CPU attention path against the naive reference, on fresh random inputs."""

from __future__ import annotations

import random

import pytest
import torch

from parrot_kernels.cpu import causal_attention, decode_attention, mask_to_bias, prefix_attention
from parrot_kernels.merge import merge_attention_states
from parrot_kernels.reference import (
    gather_paged,
    random_block_tables,
    reference_attention,
    reference_paged_decode,
)

HKV, HQ, D, BS = 3, 9, 32, 16


def _paged(num_blocks: int, dtype=torch.float32):
    k = torch.randn(num_blocks, BS, HKV, D, dtype=dtype)
    v = torch.randn(num_blocks, BS, HKV, D, dtype=dtype)
    return k, v


def _tables(tables: list[list[int]], lens: list[int]):
    """Padded block tables and the additive bias that hides padding."""
    width = max(len(t) for t in tables)
    padded = torch.zeros(len(lens), width, dtype=torch.long)
    for i, table in enumerate(tables):
        padded[i, : len(table)] = torch.tensor(table)
    valid = torch.arange(width * BS).unsqueeze(0) < torch.tensor(lens).unsqueeze(1)
    return padded, valid


@pytest.mark.parametrize("seed", range(5))
def test_decode_matches_reference_with_uneven_lengths_and_shuffled_blocks(seed: int):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    k, v = _paged(64)
    lens = [rng.randint(1, 90) for _ in range(6)]
    tables, _ = random_block_tables(rng, lens, 64, BS)
    q = torch.randn(len(lens), HQ, D)
    padded, valid = _tables(tables, lens)
    out, lse = decode_attention(q, k, v, padded, mask_to_bias(valid, q.dtype), D**-0.5)
    ref_out, ref_lse = reference_paged_decode(q, k, v, tables, lens)
    assert (out - ref_out).abs().max() < 1e-4
    assert (lse - ref_lse).abs().max() < 1e-4


@pytest.mark.parametrize("prefix_len", [16, 37, 100])
def test_shared_prefix_plus_suffix_merge_is_exact(prefix_len: int):
    torch.manual_seed(prefix_len)
    pk, pv = torch.randn(prefix_len, HKV, D), torch.randn(prefix_len, HKV, D)
    suffix_lens = [1, 5, 17, 3]
    q = torch.randn(len(suffix_lens), HQ, D)
    p_out, p_lse = prefix_attention(q, pk, pv, D**-0.5)
    for i, n in enumerate(suffix_lens):
        sk, sv = torch.randn(n, HKV, D), torch.randn(n, HKV, D)
        s_out, s_lse = reference_attention(q[i : i + 1], sk, sv)
        merged, merged_lse = merge_attention_states(
            p_out[i : i + 1], p_lse[i : i + 1], s_out, s_lse
        )
        full, full_lse = reference_attention(q[i : i + 1], torch.cat([pk, sk]), torch.cat([pv, sv]))
        assert (merged - full).abs().max() < 1e-4
        assert (merged_lse - full_lse).abs().max() < 1e-4


@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (7, 7), (5, 40), (33, 33)])
def test_causal_prefill_matches_reference(lq: int, lk: int):
    torch.manual_seed(lq * 100 + lk)
    q = torch.randn(lq, HQ, D)
    k, v = torch.randn(lk, HKV, D), torch.randn(lk, HKV, D)
    ref, _ = reference_attention(q, k, v)
    assert (causal_attention(q, k, v, D**-0.5) - ref).abs().max() < 1e-4


def test_bfloat16_decode_is_close_to_reference():
    torch.manual_seed(7)
    k, v = _paged(16, torch.bfloat16)
    tables, lens = [[3, 1, 4], [9, 2]], [40, 20]
    q = torch.randn(2, HQ, D, dtype=torch.bfloat16)
    padded, valid = _tables(tables, lens)
    out, _ = decode_attention(q, k, v, padded, mask_to_bias(valid, q.dtype), D**-0.5)
    ref, _ = reference_paged_decode(q.float(), k.float(), v.float(), tables, lens)
    assert ((out.float() - ref).norm() / ref.norm()) < 1e-2


def test_gather_paged_reads_blocks_in_table_order():
    cache = torch.arange(4 * BS).float().view(4, BS, 1, 1)
    got = gather_paged(cache, [2, 0], BS + 3).flatten().tolist()
    assert got == list(range(2 * BS, 3 * BS)) + [0.0, 1.0, 2.0]
