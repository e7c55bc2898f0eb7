"""A whole step on the Triton path (KV writes, shared-prefix groups, prefill) vs the oracle.

Also covers what CUDA graphs rely on: a step packed at a larger fixed capacity, with padded
rows that must attend nothing and write no KV. Runs compiled on a GPU, under Triton's CPU
interpreter without one, and is skipped without triton.
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from engine.builtin.attention import AttentionPlan, device_plan
from engine.builtin.config import tiny_config
from engine.builtin.engine import BuiltinEngine
from engine.builtin.kv_cache import KVCache
from engine.builtin.model import LlamaModel
from engine.builtin.model_files import random_weights
from engine.builtin.options import EngineOptions
from engine.protocol import FillRequest, GenerateRequest, SamplingParams
from parrot_kernels.reference import reference_attention, reference_paged_decode
from parrot_kernels.triton.graphs import graph_capacity
from parrot_kernels.triton.step import TritonAttention

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BS = 16
NUM_BLOCKS = 96


def _step(seed: int):
    """Two shared-prefix groups (2-4 full blocks each), a loner, one prefill with context."""
    rng = random.Random(seed)
    free = list(range(NUM_BLOCKS))
    rng.shuffle(free)
    decodes = []
    for _ in range(2):
        prefix = [free.pop() for _ in range(rng.randint(2, 4))]
        for _ in range(rng.randint(2, 4)):
            suffix_len = rng.randint(1, 40)  # uneven, not block aligned
            own = [free.pop() for _ in range(-(-suffix_len // BS))]
            decodes.append((prefix + own, len(prefix) * BS + suffix_len))
    decodes.append(([free.pop()], 7))
    prefills = [([free.pop() for _ in range(3)], 20, 13)]  # 20 cached tokens, 13 new
    return decodes, prefills


def _kv(dtype: torch.dtype = torch.float32) -> KVCache:
    kv = KVCache(tiny_config(), NUM_BLOCKS, BS, dtype, DEV)
    kv.k.normal_()
    kv.v.normal_()
    return kv


def _inputs(t: int, seed: int):
    cfg = tiny_config()
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(t, cfg.num_heads, cfg.head_dim, generator=g).to(DEV)
    k = torch.randn(t, cfg.num_kv_heads, cfg.head_dim, generator=g).to(DEV)
    v = torch.randn(t, cfg.num_kv_heads, cfg.head_dim, generator=g).to(DEV)
    return q, k, v


@pytest.mark.parametrize(("seed", "splits"), [(0, None), (1, (3, 2))])
def test_step_matches_reference_and_writes_kv(seed: int, splits):
    cfg = tiny_config()
    decodes, prefills = _step(seed)
    kv = _kv()
    expected = KVCache(cfg, NUM_BLOCKS, BS, torch.float32, DEV)
    expected.k.copy_(kv.k)
    expected.v.copy_(kv.v)
    plan = device_plan(kv, cfg.head_dim**-0.5, cfg.num_heads, decodes, prefills)
    assert len(plan.groups) == 2
    plan.splits = splits
    nd, t = len(decodes), len(decodes) + 13
    q, k, v = _inputs(t, seed)
    out = plan(0, q, k, v)

    cpu = AttentionPlan.build(expected, cfg.head_dim**-0.5, cfg.num_heads, decodes, prefills)
    cpu.slot_mapping = cpu.slot_mapping.to(DEV)
    cpu.kv.write(0, cpu.slot_mapping, k, v)
    assert torch.equal(kv.k, expected.k) and torch.equal(kv.v, expected.v)
    blocks = (NUM_BLOCKS, BS, cfg.num_kv_heads, cfg.head_dim)
    k_blocks, v_blocks = kv.k[0].view(blocks).cpu(), kv.v[0].view(blocks).cpu()
    ref, _ = reference_paged_decode(
        q[:nd].cpu(), k_blocks, v_blocks, [d[0] for d in decodes], [d[1] for d in decodes]
    )
    assert (out[:nd].cpu() - ref).abs().max() < 1e-4
    table = prefills[0][0]
    slots = [b * BS + o for b in table for o in range(BS)][:33]
    ref_p, _ = reference_attention(q[nd:].cpu(), kv.k[0][slots].cpu(), kv.v[0][slots].cpu())
    assert (out[nd:].cpu() - ref_p).abs().max() < 1e-4


def test_graph_shaped_step_pads_without_side_effects():
    """Packed at a CUDA graph's capacity: all-padding metadata writes nothing and yields
    zeros; refilled with a real decode step it gives the exact step's outputs."""
    cfg = tiny_config()
    decodes, _ = _step(2)
    nd, size = len(decodes), 16
    kv = _kv()
    scale = cfg.head_dim**-0.5
    cap = graph_capacity(size, cfg.num_heads // cfg.num_kv_heads, max_blocks=12)
    static = TritonAttention(kv, scale, cfg.num_heads, [], [], [], cap, splits=(4, 3))
    static.upload()
    q, k, v = _inputs(size, 7)
    before_k, before_v = kv.k.clone(), kv.v.clone()
    assert torch.all(static(0, q, k, v) == 0)
    assert torch.equal(kv.k, before_k) and torch.equal(kv.v, before_v)

    exact = device_plan(kv, scale, cfg.num_heads, decodes, [])
    static.refill(exact)
    padded_out = static(0, q, k, v)
    kv.k.copy_(before_k)
    kv.v.copy_(before_v)
    exact_out = exact(0, q[:nd], k[:nd], v[:nd])
    assert (padded_out[:nd] - exact_out).abs().max() < 1e-5
    assert torch.all(padded_out[nd:] == 0)


def test_model_forward_on_triton_path_matches_cpu_plan():
    """The tiny model's logits for a mixed step: Triton path (on DEV) vs the CPU plan."""
    cfg = tiny_config()
    weights = random_weights(cfg, seed=3)
    decodes, prefills = _step(4)
    nd, t = len(decodes), len(decodes) + 13
    rng = random.Random(4)
    ids = torch.tensor([rng.randrange(cfg.vocab_size) for _ in range(t)])
    positions = torch.tensor([n - 1 for _, n in decodes] + list(range(20, 33)))
    rows = torch.tensor(list(range(nd)) + [t - 1])
    scale = cfg.head_dim**-0.5
    kv = _kv()
    kv_cpu = KVCache(cfg, NUM_BLOCKS, BS, torch.float32)
    kv_cpu.k.copy_(kv.k)
    kv_cpu.v.copy_(kv.v)
    cpu_model = LlamaModel(cfg, weights, torch.float32, "cpu", q4_max_rows=0)
    ref = cpu_model.forward(
        ids, positions, AttentionPlan.build(kv_cpu, scale, cfg.num_heads, decodes, prefills), rows
    )
    model = LlamaModel(cfg, weights, torch.float32, DEV, q4_max_rows=0)
    plan = device_plan(kv, scale, cfg.num_heads, decodes, prefills)
    got = model.forward(ids.to(DEV), positions.to(DEV), plan, rows.to(DEV)).cpu()
    assert (got - ref).abs().max() < 1e-3 * ref.abs().max()


async def _greedy(eng: BuiltinEngine, rid: str, tokens: list[int], parent: str | None):
    sp = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    req = GenerateRequest(
        request_id=rid, context_id=rid, parent_context_id=parent, prompt_token_ids=tokens,
        sampling=sp, free_on_finish=True,
    )  # fmt: skip
    return [t async for c in eng.generate(req) for t in c.token_ids]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_engine_on_cuda_matches_cpu_token_for_token(tiny_model):
    """The engine on CUDA (Triton kernels, shared-prefix groups, CUDA graphs with padded
    rows) picks the same greedy tokens as on the CPU, both in float32."""
    rng = random.Random(0)
    vocab = tiny_model.config.vocab_size
    prefix = [rng.randrange(100, vocab) for _ in range(70)]  # 4 full blocks + 6 tokens
    suffixes = [[rng.randrange(100, vocab) for _ in range(rng.randint(1, 20))] for _ in range(3)]
    results = {}
    for device in ("cpu", "cuda"):
        opts = EngineOptions(device=device, dtype="float32", num_blocks=256)
        eng = BuiltinEngine(tiny_model, opts)
        await eng.start()
        await eng.fill(FillRequest(context_id="sys", token_ids=prefix))
        jobs = [_greedy(eng, f"r{i}", s, "sys") for i, s in enumerate(suffixes)]
        results[device] = await asyncio.gather(*jobs, _greedy(eng, "solo", prefix[:9], None))
        await eng.close()
    assert results["cuda"] == results["cpu"]
