"""The per-step attention plan (shared-prefix groups + suffixes + prefills) vs the oracle."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from engine.builtin.attention import AttentionPlan
from engine.builtin.config import tiny_config
from engine.builtin.kv_cache import KVCache
from parrot_kernels import native
from parrot_kernels.reference import reference_attention, reference_paged_decode

BS = 16


def _random_cache(seed: int, num_blocks: int, dtype: torch.dtype):
    """A seeded rng, the tiny config, a KV cache of random values and its block ids shuffled
    (pop them to build tables that are neither ordered nor contiguous)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    cfg = tiny_config()
    kv = KVCache(cfg, num_blocks=num_blocks, block_size=BS, dtype=dtype)
    kv.k.normal_()
    kv.v.normal_()
    free = list(range(num_blocks))
    rng.shuffle(free)
    return rng, cfg, kv, free


def _step_qkv(cfg, t: int, dtype: torch.dtype):
    """A step's fresh q, k, v for `t` tokens."""
    return (
        torch.randn(t, cfg.num_heads, cfg.head_dim).to(dtype),
        torch.randn(t, cfg.num_kv_heads, cfg.head_dim).to(dtype),
        torch.randn(t, cfg.num_kv_heads, cfg.head_dim).to(dtype),
    )


@pytest.mark.parametrize("seed", range(6))
def test_shared_prefix_groups_match_reference(seed: int):
    rng, cfg, kv, free = _random_cache(seed, 128, torch.float32)
    decodes = []
    for _ in range(2):  # two groups, each with its own shared prefix of 2-4 full blocks
        prefix = [free.pop() for _ in range(rng.randint(2, 4))]
        for _ in range(rng.randint(2, 4)):
            suffix_len = rng.randint(1, 40)  # uneven, not block aligned
            own = [free.pop() for _ in range(-(-suffix_len // BS))]
            decodes.append((prefix + own, len(prefix) * BS + suffix_len))
    decodes.append(([free.pop()], 7))  # a loner with no shared prefix
    prefill_table = [free.pop() for _ in range(3)]
    prefills = [(prefill_table, 20, 13)]  # 20 computed tokens, 13 new

    plan = AttentionPlan.build(kv, cfg.head_dim**-0.5, cfg.num_heads, decodes, prefills)
    assert len(plan.groups) == 2
    q, k, v = _step_qkv(cfg, len(decodes) + 13, torch.float32)
    out = plan(0, q, k, v)

    k_blocks = kv.k[0].view(128, BS, cfg.num_kv_heads, cfg.head_dim)
    v_blocks = kv.v[0].view(128, BS, cfg.num_kv_heads, cfg.head_dim)
    nd = len(decodes)
    ref, _ = reference_paged_decode(
        q[:nd], k_blocks, v_blocks, [d[0] for d in decodes], [d[1] for d in decodes]
    )
    assert (out[:nd] - ref).abs().max() < 1e-4
    slots = [b * BS + o for b in prefill_table for o in range(BS)][:33]
    ref_p, _ = reference_attention(q[nd:], kv.k[0][slots], kv.v[0][slots])
    assert (out[nd:] - ref_p).abs().max() < 1e-4


def test_sharing_off_builds_no_groups():
    cfg = tiny_config()
    kv = KVCache(cfg, num_blocks=16, block_size=BS, dtype=torch.float32)
    decodes = [([0, 1, 2], 40), ([0, 1, 3], 35)]
    plan = AttentionPlan.build(kv, 1.0, cfg.num_heads, decodes, [], share_prefixes=False)
    assert plan.groups == []


@pytest.mark.skipif(native.load() is None, reason="no C decode kernel on this machine")
@pytest.mark.parametrize("seed", range(3))
def test_native_decode_kernel_gives_the_same_plan_result_as_torch(seed: int):
    """Shared groups, loners and a prefill in one bf16 step: the torch path splits the group's
    prefix from the suffixes and merges them; the C path reads each row's whole table in place
    (no groups). Both give the same attention."""
    rng, cfg, kv, free = _random_cache(seed, 64, torch.bfloat16)
    prefix = [free.pop() for _ in range(3)]
    decodes = [(prefix + [free.pop()], 3 * BS + rng.randint(1, BS)) for _ in range(3)]
    decodes.append(([free.pop(), free.pop()], rng.randint(17, 32)))
    prefills = [([free.pop() for _ in range(2)], 5, 11)]
    q, k, v = _step_qkv(cfg, len(decodes) + 11, torch.bfloat16)
    outs = []
    for kernel in (None, native.load().decode):
        plan = AttentionPlan.build(
            kv, cfg.head_dim**-0.5, cfg.num_heads, decodes, prefills, native=kernel
        )
        assert len(plan.groups) == (1 if kernel is None else 0)
        outs.append(plan(0, q, k, v).float())
    assert (outs[0] - outs[1]).abs().max() < 0.03


LIB = native.load()


@pytest.mark.skipif(
    LIB is None or LIB.shared is None, reason="no AVX-512 BF16 for the shared-prefix C kernel here"
)
@pytest.mark.parametrize("loner", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_shared_kernel_takes_shared_groups_and_agrees_with_torch(seed: int, loner: bool):
    """SmolLM2's head layout (9 query heads over 3 KV heads): a group of 7 rows (more than one
    item holds) and one of 2 go to the shared-prefix kernel (the variant this machine runs),
    the loner (if any) and the prefill elsewhere; the result matches the torch path's
    split-and-merge and the paged kernel alone; so do the short prefill chunks the
    shared-prefix kernel takes. Without a loner the paged kernel has no row and is not called."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    cfg = dataclasses.replace(tiny_config(), num_heads=9, num_kv_heads=3, head_dim=64)
    kv = KVCache(cfg, num_blocks=96, block_size=BS, dtype=torch.bfloat16)
    kv.k.normal_()
    kv.v.normal_()
    free = list(range(96))
    rng.shuffle(free)
    decodes = []
    for members in (7, 2):
        prefix = [free.pop() for _ in range(rng.randint(2, 5))]
        for _ in range(members):
            suffix_len = rng.randint(1, 40)
            own = [free.pop() for _ in range(-(-suffix_len // BS))]
            decodes.append((prefix + own, len(prefix) * BS + suffix_len))
    if loner:
        decodes.insert(3, ([free.pop(), free.pop()], rng.randint(17, 32)))  # mid-batch
    # Prefill chunks: short ones go to the shared-prefix kernel (from the start, and 23 tokens
    # after 70: items over a 64- or 80-token prefix); a long one too in its vector variant,
    # while on AMX tiles it keeps the torch path.
    prefills = [
        ([free.pop() for _ in range(2)], 5, 11),
        ([free.pop() for _ in range(6)], 70, 23),
        ([free.pop() for _ in range(5)], 0, 70),
    ]
    q, k, v = _step_qkv(cfg, len(decodes) + 11 + 23 + 70, torch.bfloat16)
    outs = []
    variants = LIB.shared_variants().values()
    for paged, shared in ((None, None), (LIB.decode, None), *((LIB.decode, s) for s in variants)):
        plan = AttentionPlan.build(
            kv, cfg.head_dim**-0.5, cfg.num_heads, decodes, prefills, native=paged, shared=shared
        )
        if shared is not None:
            # 7 rows at 5 per item: two items of 3 and 4; then the group of 2.
            assert plan.shared_items.starts.diff().tolist() == [4, 3, 2]
            assert (plan.paged_lens == 0).sum() == 9 and plan.paged_rows == loner
            assert not loner or plan.paged_lens[3] > 0
            taken = [s.tiles is not None for s in plan.prefills]
            assert taken == [True, True, not shared.tiles]
            assert plan.prefills[1].tiles.items.prefix.tolist() == [64, 64, 80, 80, 80]
        outs.append(plan(0, q, k, v).float())
    for out in outs[1:]:
        assert (outs[0] - out).abs().max() < 0.03
