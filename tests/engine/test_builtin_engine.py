"""The builtin engine on a tiny random-weight model: sharing, batching, limits, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time

import pytest

from engine.builtin.engine import BuiltinEngine
from engine.builtin.layer_ops import NativeLayerOps
from engine.builtin.options import EngineOptions
from engine.builtin.scheduler import SchedulerConfig
from engine.errors import (
    ContextBusy,
    ContextExists,
    ContextLengthExceeded,
    InvalidRequest,
    OutOfBlocks,
    UnknownContext,
)
from engine.protocol import (
    FillRequest,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
    SamplingParams,
    Scheduling,
)
from parrot_kernels import native

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def make_engine(model, **options) -> BuiltinEngine:
    sched = {
        k: options.pop(k)
        for k in (
            "max_batch_size",
            "max_step_tokens",
            "latency_cap",
            "throughput_share",
            "followup_hold_s",
        )
        if k in options
    }
    options.setdefault("dtype", "float32")
    options.setdefault("num_blocks", 256)
    return BuiltinEngine(model, EngineOptions(scheduler=SchedulerConfig(**sched), **options))


@pytest.fixture
async def engine(tiny_model):
    eng = make_engine(tiny_model)
    await eng.start()
    yield eng
    await eng.close()


async def run(engine, rid, tokens=None, ctx=None, parent=None, sampling=GREEDY, free=True):
    chunks = [
        c
        async for c in engine.generate(
            GenerateRequest(
                request_id=rid,
                context_id=ctx or rid,
                parent_context_id=parent,
                prompt_token_ids=tokens,
                sampling=sampling,
                free_on_finish=free,
            )
        )
    ]
    return [t for c in chunks for t in c.token_ids], chunks


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 49152) for _ in range(n)]


async def alone(tiny_model, tokens, sampling=GREEDY):
    eng = make_engine(tiny_model, enable_prefix_cache=False, share_prefix_attention=False)
    await eng.start()
    try:
        out, _ = await run(eng, "alone", tokens, sampling=sampling)
        return out
    finally:
        await eng.close()


async def test_forks_of_a_shared_prefix_equal_each_run_alone(tiny_model):
    eng = make_engine(tiny_model, enable_prefix_cache=False)
    await eng.start()
    try:
        prefix = prompt(0, 45)  # not a multiple of the block size: the fork copies a block
        await eng.fill(FillRequest(context_id="sys", token_ids=prefix))
        suffixes = [prompt(10 + i, 3 + 5 * i) for i in range(5)]
        outs = await asyncio.gather(
            *(run(eng, f"q{i}", s, ctx=f"c{i}", parent="sys") for i, s in enumerate(suffixes))
        )
        stats = await eng.stats()
        await eng.free("sys")
        assert (await eng.stats()).free_blocks == stats.total_blocks
    finally:
        await eng.close()
    for (got, _), suffix in zip(outs, suffixes, strict=True):
        assert got == await alone(tiny_model, prefix + suffix)


async def test_batched_requests_arriving_at_different_times_equal_each_alone(tiny_model):
    eng = make_engine(tiny_model, max_step_tokens=64)
    await eng.start()
    try:
        prompts = [prompt(100 + i, n) for i, n in enumerate([5, 80, 17, 33, 150, 2])]

        async def late(i, p):
            await asyncio.sleep(0.01 * i)
            return await run(eng, f"r{i}", p)

        outs = await asyncio.gather(*(late(i, p) for i, p in enumerate(prompts)))
    finally:
        await eng.close()
    for (got, _), p in zip(outs, prompts, strict=True):
        assert got == await alone(tiny_model, p)


async def test_prefix_cache_reuse_gives_the_same_tokens_and_counts_hits(tiny_model):
    eng = make_engine(tiny_model)
    await eng.start()
    try:
        shared = prompt(5, 64)
        first, _ = await run(eng, "a", shared + [7, 8, 9])
        again, chunks = await run(eng, "b", shared + [7, 8, 9])
        assert first == again
        assert chunks[-1].usage.cached_tokens == 64
    finally:
        await eng.close()


async def test_kv_exhaustion_preempts_and_still_matches_alone(tiny_model):
    # 24 blocks of 16 = 384 slots; six requests of ~100 tokens cannot all be resident.
    eng = make_engine(tiny_model, num_blocks=24, enable_prefix_cache=False)
    await eng.start()
    try:
        prompts = [prompt(200 + i, 80 + i) for i in range(6)]
        sampling = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        outs = await asyncio.gather(
            *(run(eng, f"r{i}", p, sampling=sampling) for i, p in enumerate(prompts))
        )
        stats = await eng.stats()
        assert stats.preemptions > 0
        assert stats.free_blocks == stats.total_blocks
    finally:
        await eng.close()
    for (got, _), p in zip(outs, prompts, strict=True):
        assert got == await alone(tiny_model, p, sampling)


async def test_request_larger_than_the_cache_is_rejected_and_engine_keeps_serving(tiny_model):
    eng = make_engine(tiny_model, num_blocks=8)
    await eng.start()
    try:
        with pytest.raises(OutOfBlocks):
            await run(eng, "big", prompt(1, 200))
        out, _ = await run(eng, "ok", prompt(2, 10))
        assert len(out) == GREEDY.max_tokens
    finally:
        await eng.close()


async def test_bad_inputs_raise_typed_errors_and_engine_keeps_serving(engine):
    with pytest.raises(ContextLengthExceeded):
        await run(engine, "long", prompt(1, 2040), sampling=SamplingParams(max_tokens=20))
    with pytest.raises(InvalidRequest):
        await run(engine, "neg", prompt(1, 4), sampling=SamplingParams(temperature=-1))
    with pytest.raises(InvalidRequest):
        await run(engine, "topp", prompt(1, 4), sampling=SamplingParams(top_p=0.0))
    with pytest.raises(InvalidRequest):
        await run(engine, "tok", [10**9])
    with pytest.raises(InvalidRequest):
        await run(engine, "empty", [])
    with pytest.raises(UnknownContext):
        await engine.fill(FillRequest(context_id="x", parent_context_id="nope", token_ids=[1]))
    with pytest.raises(UnknownContext):
        await engine.free("nope")
    await engine.fill(FillRequest(context_id="p", token_ids=prompt(3, 20)))
    await engine.fill(FillRequest(context_id="c", parent_context_id="p", token_ids=[5]))
    with pytest.raises(ContextBusy):
        await engine.free("p")
    with pytest.raises(ContextExists):
        await engine.fill(FillRequest(context_id="c", parent_context_id="c2", token_ids=[5]))
    await engine.free("c")
    await engine.free("p")
    with pytest.raises(UnknownContext):
        await engine.free("p")
    out, _ = await run(engine, "fine", prompt(4, 8))
    assert len(out) == GREEDY.max_tokens
    stats = await engine.stats()
    assert stats.free_blocks == stats.total_blocks and stats.num_contexts == 0


async def test_generation_continues_a_context_and_forks_after_it(engine):
    await engine.fill(FillRequest(context_id="conv", token_ids=prompt(8, 30)))
    first, _ = await run(engine, "g1", [11, 12], ctx="conv", free=False)
    # Forking right after generation: the last sampled token is not computed yet.
    branch, _ = await run(engine, "g2", [13], ctx="b", parent="conv")
    expect, _ = await run(engine, "g3", prompt(8, 30) + [11, 12] + first + [13])
    assert branch == expect
    await engine.free("conv")


async def test_max_tokens_stop_strings_and_stop_token_ids(engine, smol_tokenizer):
    base = prompt(9, 12)
    out, chunks = await run(engine, "m", base, sampling=SamplingParams(max_tokens=7, temperature=0))
    assert chunks[-1].finish_reason in ("length", "stop") and len(out) <= 7
    full_text = "".join(c.text for c in chunks)
    if full_text.strip():
        stop = full_text.strip()[:2]
        _, chunks2 = await run(
            engine, "s", base, sampling=SamplingParams(max_tokens=7, temperature=0, stop=[stop])
        )
        text2 = "".join(c.text for c in chunks2)
        assert stop not in text2 and chunks2[-1].finish_reason == "stop"
        assert full_text.startswith(text2)
    forced = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, stop_token_ids=[out[2]])
    out3, chunks3 = await run(engine, "t", base, sampling=forced)
    assert out3 == out[: out.index(out[2]) + 1] and chunks3[-1].finish_reason == "stop"


async def test_seeded_sampling_is_reproducible_and_logprobs_are_reported(engine):
    sp = SamplingParams(
        max_tokens=8, temperature=0.9, top_p=0.9, top_k=50, seed=42, logprobs=3, ignore_eos=True
    )
    a, chunks = await run(engine, "a", prompt(11, 10), sampling=sp)
    b, _ = await run(engine, "b", prompt(11, 10), sampling=sp)
    assert a == b
    lp = chunks[0].logprobs[0]
    assert lp.token_id == a[0] and lp.logprob <= 0 and len(lp.top) == 3


async def test_abort_by_closing_the_stream_frees_the_context(engine):
    stream = engine.generate(
        GenerateRequest(
            request_id="r",
            context_id="r",
            prompt_token_ids=prompt(12, 10),
            sampling=SamplingParams(max_tokens=500, ignore_eos=True),
            free_on_finish=True,
        )
    )
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(100):
        stats = await engine.stats()
        if stats.num_contexts == 0 and stats.num_running == 0:
            break
        await asyncio.sleep(0.01)
    assert stats.num_contexts == 0 and stats.free_blocks == stats.total_blocks


async def test_a_rescheduled_request_runs_as_latency_work(tiny_model):
    # A share of 0: throughput work does not step at all while latency work is live.
    eng = make_engine(tiny_model, throughput_share=0.0)
    await eng.start()
    finished: list[str] = []

    async def drain(rid: str, max_tokens: int, objective: str) -> None:
        request = GenerateRequest(
            request_id=rid,
            context_id=rid,
            prompt_token_ids=prompt(len(rid), 6),
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
            scheduling=Scheduling(objective=objective),
            free_on_finish=True,
        )
        async for _ in eng.generate(request):
            pass
        finished.append(rid)

    try:
        chat = asyncio.create_task(drain("chat", 1500, "latency"))
        late = asyncio.create_task(drain("late", 4, "throughput"))
        while (await eng.stats()).num_running + (await eng.stats()).num_waiting < 2:
            await asyncio.sleep(0.001)
        assert not finished  # the chat is far from done; "late" has not stepped
        promoted = await eng.reschedule(
            RescheduleRequest(context_id="late", scheduling=Scheduling(objective="latency"))
        )
        assert promoted == Rescheduled(True)
        await late
        assert finished == ["late"]  # promoted, it decodes beside the chat and ends first
        assert (await eng.stats()).num_latency_running == 1
        chat.cancel()  # closing its stream aborts it
        with contextlib.suppress(asyncio.CancelledError):
            await chat
        gone = RescheduleRequest(context_id="late", scheduling=Scheduling())
        assert await eng.reschedule(gone) == Rescheduled(False)
    finally:
        await eng.close()


async def test_throughput_sleeps_through_a_hold_for_a_follow_up(tiny_model):
    eng = make_engine(tiny_model, followup_hold_s=0.5)
    await eng.start()
    bulk_at: list[float] = []
    loop = asyncio.get_running_loop()

    def request(rid: str, max_tokens: int, **scheduling) -> GenerateRequest:
        return GenerateRequest(
            request_id=rid,
            context_id=rid,
            prompt_token_ids=prompt(len(rid), 6),
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
            scheduling=Scheduling(**scheduling),
            free_on_finish=True,
        )

    async def background() -> None:
        async for chunk in eng.generate(request("bulk", 1500, objective="throughput")):
            bulk_at.extend([loop.time()] * len(chunk.token_ids))

    async def link(rid: str, followup: bool) -> float:
        async for _ in eng.generate(request(rid, 2, followup=followup)):
            pass
        return loop.time()

    bulk = asyncio.create_task(background())
    try:
        while len(bulk_at) < 3:
            await asyncio.sleep(0.005)
        done = await link("link-1", followup=True)
        await asyncio.sleep(0.05)  # tokens of the step that finished the link may trail it
        seen, cpu = len(bulk_at), time.process_time()
        await asyncio.sleep(0.25)
        # The engine waits for the next link instead of stepping background work, and it
        # sleeps while it waits (a spinning loop would burn the CPU the gateway needs).
        assert len(bulk_at) == seen and all(t < done + 0.05 for t in bulk_at)
        assert time.process_time() - cpu < 0.1
        # The next link wakes the engine at once; the hold would have lasted to done + 0.5.
        assert await link("link-2", followup=False) < done + 0.45
        while len(bulk_at) == seen:  # the chain is done: background work goes on
            await asyncio.sleep(0.005)
    finally:
        bulk.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bulk
        await eng.close()


async def test_step_trace_splits_each_step_by_objective(tiny_model, tmp_path):
    path = tmp_path / "steps.jsonl"
    eng = make_engine(tiny_model, step_trace=str(path), max_step_tokens=16)
    await eng.start()
    try:
        batch = GenerateRequest(
            request_id="t",
            context_id="t",
            prompt_token_ids=prompt(1, 20),
            sampling=SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True),
            scheduling=Scheduling(objective="throughput"),
        )
        chat = GenerateRequest(
            request_id="l",
            context_id="l",
            prompt_token_ids=prompt(2, 5),
            sampling=SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True),
        )

        async def drain(request):
            return [c async for c in eng.generate(request)]

        await asyncio.gather(drain(batch), drain(chat))
    finally:
        await eng.close()
    steps = [json.loads(line) for line in path.read_text().splitlines()]
    # Every computed token is in the trace exactly once, under its own objective:
    # prompt tokens plus one per generated token after the first.
    assert sum(s["tput_tokens"] for s in steps) == 20 + 2
    assert sum(s["lat_tokens"] for s in steps) == 5 + 2
    # Attention work: each prompt token attends causally, each decode to its whole context
    # (20 prompt tokens in chunks of 16 and 4, decodes at 21 and 22; 5 tokens, then 6 and 7).
    assert sum(s["kv"] for s in steps) == sum(range(1, 21)) + 21 + 22 + sum(range(1, 6)) + 6 + 7
    assert all(s["lat_tokens"] + s["tput_tokens"] <= 16 and s["s"] >= 0 for s in steps)
    assert [s["t"] for s in steps] == sorted(s["t"] for s in steps)


async def test_cpu_bf16_runs_the_c_kernels_unless_turned_off(tiny_model):
    """Where the C kernels build, the engine uses them for decode attention and the layer
    ops; `native_kernels=False` keeps torch ops. Both serve a decode over several blocks.
    (The kernels are bf16 only; the other engine tests run float32, so on torch ops.)"""
    kernels_here = native.load() is not None
    for flag in (True, False):
        eng = make_engine(tiny_model, dtype="bfloat16", native_kernels=flag)
        assert (eng.runner.native is not None) == (flag and kernels_here)
        assert isinstance(eng.model.ops, NativeLayerOps) == (flag and kernels_here)
        await eng.start()
        try:
            out, _ = await run(
                eng,
                f"n{flag}",
                prompt(5, 40),
                sampling=SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True),
            )
            assert len(out) == 30
        finally:
            await eng.close()
