"""The Triton kernels against the naive reference, on fresh random inputs.

On a GPU they run compiled; without one they run under Triton's CPU interpreter
(TRITON_INTERPRET=1, set before any kernel is defined); without triton they are skipped.
Inputs are adversarial for paging: uneven lengths, block tables out of order, prefixes that
end inside a block, and output buffers poisoned with NaN before the call.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from parrot_kernels import merge as torch_merge
from parrot_kernels.reference import (
    gather_paged,
    random_block_tables,
    reference_attention,
    reference_paged_decode,
)
from parrot_kernels.triton.decode import paged_decode
from parrot_kernels.triton.merge import merge_attention_states, merge_partials
from parrot_kernels.triton.prefill import paged_prefill
from parrot_kernels.triton.prefix import shared_prefix_decode

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BS = 16
# Relative error bound on outputs, absolute on log-sum-exp, per dtype.
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
DTYPES = list(TOL)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double().cpu() - ref.double()).norm() / ref.double().norm())


def _cache(num_blocks: int, hkv: int, d: int, dtype: torch.dtype, bs: int = BS):
    k = torch.randn(num_blocks, bs, hkv, d).to(DEV, dtype)
    v = torch.randn(num_blocks, bs, hkv, d).to(DEV, dtype)
    return k, v


def _poisoned(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEV)


def _shuffled_tables(rng: random.Random, lens: list[int], num_blocks: int, bs: int = BS):
    tables, padded = random_block_tables(rng, lens, num_blocks, bs)
    return tables, padded.to(DEV, torch.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("hq", "hkv", "splits"), [(8, 2, 1), (6, 2, 3)])
def test_paged_decode_matches_reference(dtype: torch.dtype, hq: int, hkv: int, splits: int):
    rng = random.Random(hq * 10 + splits)
    torch.manual_seed(hq * 10 + splits)
    d = 32
    lens = [rng.randint(1, 100) for _ in range(5)]
    k, v = _cache(48, hkv, d, dtype)
    tables, padded = _shuffled_tables(rng, lens, 48)
    q = torch.randn(len(lens), hq, d).to(DEV, dtype)
    out = _poisoned(len(lens), hq, d, dtype=dtype)
    lse = _poisoned(len(lens), hq, dtype=torch.float32)
    paged_decode(q, k, v, padded, torch.tensor(lens, device=DEV), d**-0.5, splits, out, lse)
    ref, ref_lse = reference_paged_decode(
        q.cpu().float(), k.cpu().float(), v.cpu().float(), tables, lens
    )
    assert _rel(out, ref) < TOL[dtype]
    assert (lse.cpu() - ref_lse).abs().max() < TOL[dtype]


def test_paged_decode_odd_head_dim_small_key_tiles_and_empty_rows():
    """head_dim 48 (padded to 64 lanes), 16-key tiles over 8-slot blocks, a length-0 row
    (a padded CUDA-graph row: out 0, lse -inf) and more splits than key tiles."""
    rng = random.Random(5)
    torch.manual_seed(5)
    d, bs = 48, 8
    lens = [37, 0, 9]
    k, v = _cache(24, 2, d, torch.float32, bs)
    tables, padded = _shuffled_tables(rng, [max(n, 1) for n in lens], 24, bs)
    q = torch.randn(3, 4, d, device=DEV)
    out, lse = paged_decode(
        q, k, v, padded, torch.tensor(lens, device=DEV), d**-0.5, num_splits=4, block_n=16
    )
    keep = [0, 2]
    ref, ref_lse = reference_paged_decode(
        q.cpu()[keep], k.cpu(), v.cpu(), [tables[i] for i in keep], [lens[i] for i in keep]
    )
    assert _rel(out[keep], ref) < 1e-4
    assert (lse.cpu()[keep] - ref_lse).abs().max() < 1e-4
    assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "prefix_len", "splits"), [(5, 70, 1), (20, 53, 3)])
def test_shared_prefix_decode_matches_reference(
    dtype: torch.dtype, n: int, prefix_len: int, splits: int
):
    """20 queries x 4 heads per KV head = 80 rows: two row tiles over one prefix."""
    rng = random.Random(n)
    torch.manual_seed(n)
    hq, hkv, d = 8, 2, 32
    k, v = _cache(32, hkv, d, dtype)
    table = rng.sample(range(32), -(-prefix_len // BS))
    q = torch.randn(n, hq, d).to(DEV, dtype)
    out = _poisoned(n, hq, d, dtype=dtype)
    lse = _poisoned(n, hq, dtype=torch.float32)
    shared_prefix_decode(
        q, k, v, torch.tensor(table, device=DEV), prefix_len, d**-0.5, splits, out, lse
    )
    pk = gather_paged(k.cpu().float(), table, prefix_len)
    pv = gather_paged(v.cpu().float(), table, prefix_len)
    # Every query sees the whole prefix: one query per sequence at the end of the keys.
    refs = [reference_attention(q[i : i + 1].cpu().float(), pk, pv) for i in range(n)]
    ref = torch.cat([r[0] for r in refs])
    ref_lse = torch.cat([r[1] for r in refs])
    assert _rel(out, ref) < TOL[dtype]
    assert (lse.cpu() - ref_lse).abs().max() < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefix_plus_suffix_merge_equals_full_attention(dtype: torch.dtype):
    """Shared prefix + per-sequence suffix, merged by log-sum-exp = attention over both."""
    rng = random.Random(11)
    torch.manual_seed(11)
    hq, hkv, d, prefix_len = 6, 2, 32, 45
    suffix = [3, 17, 30]
    k, v = _cache(40, hkv, d, dtype)
    order = rng.sample(range(40), 40)
    prefix_table = order[:3]
    tables = [prefix_table + order[3 + 2 * i : 5 + 2 * i] for i in range(len(suffix))]
    lens = [prefix_len + s for s in suffix]
    q = torch.randn(len(suffix), hq, d).to(DEV, dtype)
    p_out, p_lse = shared_prefix_decode(
        q, k, v, torch.tensor(prefix_table, device=DEV), prefix_len, d**-0.5
    )
    # Suffix keys: positions [prefix_len, len) of each table, as their own paged cache rows.
    kc, vc = k.cpu().float(), v.cpu().float()
    s_k = [gather_paged(kc, t, n)[prefix_len:] for t, n in zip(tables, lens, strict=True)]
    s_v = [gather_paged(vc, t, n)[prefix_len:] for t, n in zip(tables, lens, strict=True)]
    s_ref = [reference_attention(q[i : i + 1].cpu().float(), s_k[i], s_v[i]) for i in range(3)]
    s_out = torch.cat([r[0] for r in s_ref]).to(DEV, dtype)
    s_lse = torch.cat([r[1] for r in s_ref]).to(DEV)
    out, lse = merge_attention_states(p_out, p_lse, s_out, s_lse)
    ref, ref_lse = reference_paged_decode(q.cpu().float(), kc, vc, tables, lens)
    assert _rel(out, ref) < TOL[dtype]
    assert (lse.cpu() - ref_lse).abs().max() < TOL[dtype]


def test_merge_matches_torch_merge_with_empty_ranges():
    torch.manual_seed(3)
    a, b = torch.randn(4, 6, 32, device=DEV), torch.randn(4, 6, 32, device=DEV)
    la, lb = torch.randn(4, 6, device=DEV) * 3, torch.randn(4, 6, device=DEV) * 3
    la[0, :3] = float("-inf")  # side a saw no keys for these rows
    lb[1, 2:] = float("-inf")
    out, lse = merge_attention_states(a, la, b, lb)
    ref, ref_lse = torch_merge.merge_attention_states(a.cpu(), la.cpu(), b.cpu(), lb.cpu())
    assert (out.cpu() - ref).abs().max() < 1e-5
    assert (lse.cpu() - ref_lse).abs().max() < 1e-5


def test_merge_partials_adds_members_by_index_and_skips_minus_one():
    """Rows 0 and 2 take their group member's prefix states; row 1 is in no group."""
    torch.manual_seed(4)
    parts, parts_lse = torch.randn(2, 3, 4, 32, device=DEV), torch.randn(2, 3, 4, device=DEV)
    extra, extra_lse = torch.randn(3, 2, 4, 32, device=DEV), torch.randn(3, 2, 4, device=DEV)
    index = torch.tensor([1, -1, 0], dtype=torch.int32, device=DEV)
    out = _poisoned(3, 4, 32, dtype=torch.float32)
    lse = _poisoned(3, 4, dtype=torch.float32)
    merge_partials(parts, parts_lse, out, lse, (extra, extra_lse, index))
    for row, member in enumerate([1, -1, 0]):
        states = [(parts[s, row], parts_lse[s, row]) for s in range(2)]
        if member >= 0:
            states += [(extra[s, member], extra_lse[s, member]) for s in range(3)]
        ref, ref_lse = states[0]
        for o, x in states[1:]:
            ref, ref_lse = torch_merge.merge_attention_states(ref, ref_lse, o, x)
        assert (out[row] - ref).abs().max() < 1e-5
        assert (lse[row] - ref_lse).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (7, 7), (5, 40), (33, 70)])
def test_paged_prefill_matches_reference(dtype: torch.dtype, lq: int, lk: int):
    """3 query heads per KV head: 21 tokens per 64-row tile, so 33 tokens span two tiles."""
    rng = random.Random(lq * 100 + lk)
    torch.manual_seed(lq * 100 + lk)
    hq, hkv, d = 6, 2, 32
    k, v = _cache(16, hkv, d, dtype)
    table = rng.sample(range(16), -(-lk // BS))
    q = torch.randn(lq, hq, d).to(DEV, dtype)
    out = _poisoned(lq, hq, d, dtype=dtype)
    paged_prefill(q, k, v, torch.tensor(table, device=DEV), lk, d**-0.5, out)
    kk = gather_paged(k.cpu().float(), table, lk)
    vv = gather_paged(v.cpu().float(), table, lk)
    ref, _ = reference_attention(q.cpu().float(), kk, vv)
    assert _rel(out, ref) < TOL[dtype]
