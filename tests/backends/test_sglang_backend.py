"""The SGLang backend over HTTP: request mapping, both streaming modes, logprobs, fill pins,
aborts - against a named fake of SGLang's HTTP API, and a real server when PARROT_SGLANG_URL
is set."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from backend_support import serve
from fake_sglang import CUMULATIVE_LOGPROB_EVENTS, INCREMENTAL_LOGPROB_EVENTS, FakeSGLangServer
from fake_sglang_runtime import FakeGenerateReqInput, FakeSGLangRuntime

from engine.errors import RequestAborted
from engine.protocol import FillRequest, GenerateRequest, SamplingParams, Scheduling
from engine.sglang.config import SGLangConfig
from engine.sglang.engine import SGLangEngine
from engine.sglang.inprocess import InProcessTransport
from engine.sglang.outputs import OUTPUT, Deltas, Output
from engine.sglang.requests import generate_body, rid_of, sampling_params, tag_for
from engine.sglang.tags import ParrotTag


def test_sampling_params_use_sglang_names() -> None:
    sampling = SamplingParams(
        max_tokens=7,
        min_tokens=2,
        temperature=0.5,
        top_k=3,
        seed=9,
        stop=["x"],
        stop_token_ids=[2],
        ignore_eos=True,
        include_stop_str_in_output=True,
        repetition_penalty=1.1,
        presence_penalty=0.5,
    )
    assert sampling_params(sampling) == {
        "max_new_tokens": 7,
        "min_new_tokens": 2,
        "temperature": 0.5,
        "top_p": 1.0,
        "top_k": 3,
        "stop": ["x"],
        "stop_token_ids": [2],
        "ignore_eos": True,
        "no_stop_trim": True,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "sampling_seed": 9,
    }
    assert "top_k" not in sampling_params(SamplingParams())  # absent: the whole vocabulary


def test_logprobs_are_asked_for_output_tokens_only() -> None:
    body = generate_body(SGLangConfig(url="u"), "r#", [1], {}, Scheduling(), ParrotTag(), True, 3)
    assert body["return_logprob"] is True and body["top_logprobs_num"] == 3
    assert body["logprob_start_len"] == -1  # the replayed context is not scored
    plain = generate_body(SGLangConfig(url="u"), "r#", [1], {}, Scheduling(), ParrotTag(), True)
    assert "return_logprob" not in plain


def test_generate_body_carries_ids_rid_priority_and_tag() -> None:
    scheduling = Scheduling(objective="latency", priority=1, app_id="t/s", group_id="g")
    config = SGLangConfig(url="u", send_priority=True)
    body = generate_body(
        config, rid_of("r1"), [5, 6], {"max_new_tokens": 1}, scheduling, tag_for(scheduling), True
    )
    assert body["input_ids"] == [5, 6] and body["rid"] == "r1#" and body["stream"] is True
    assert body["priority"] == 11  # SGLang's default: higher runs first; latency boosted
    low_first = SGLangConfig(url="u", send_priority=True, higher_priority_first=False)
    assert generate_body(low_first, "r", [1], {}, scheduling, ParrotTag(), False)["priority"] == -11
    assert "priority" not in generate_body(
        SGLangConfig(url="u"), "r", [1], {}, scheduling, ParrotTag(), False
    )
    tag = ParrotTag.decode(body["routing_key"])
    assert tag == ParrotTag("latency", 1, "t/s", "g")
    assert ParrotTag.decode("someone-elses-key") is None
    pin = ParrotTag.decode(ParrotTag(objective="throughput", pin="ctx").encode())
    assert pin.pin == "ctx" and not pin.is_latency


def test_deltas_read_cumulative_and_incremental_streams() -> None:
    out = _output
    cumulative = Deltas()
    assert cumulative.step(out([1], "a", 1)) == ([1], "a", None)
    assert cumulative.step(out([1, 2], "ab", 2)) == ([2], "b", None)
    assert cumulative.step(out([1, 2, 3], "abc", 3)) == ([3], "c", None)
    incremental = Deltas()
    assert incremental.step(out([1], "a", 1)) == ([1], "a", None)
    assert incremental.step(out([2], "b", 2)) == ([2], "b", None)
    assert incremental.step(out([3], "c", 3)) == ([3], "c", None)


@pytest.mark.parametrize("events", [CUMULATIVE_LOGPROB_EVENTS, INCREMENTAL_LOGPROB_EVENTS])
def test_logprob_entries_become_token_logprobs(events: list[dict]) -> None:
    deltas = Deltas()
    steps = [deltas.step(OUTPUT.decode(msgspec.json.encode(e))) for e in events]
    assert [s.token_ids for s in steps] == [[72], [33]]
    first, second = steps[0].logprobs[0], steps[1].logprobs[0]
    assert (first.token_id, first.logprob) == (72, -0.5)
    assert [(t.token_id, t.logprob) for t in first.top] == [(72, -0.5), (104, -1.25)]
    assert (second.token_id, second.logprob) == (33, -2.0)
    assert second.top[0].token_id == 46 and second.top[1].logprob == -math.inf


def _output(ids: list[int], text: str, total: int) -> Output:
    raw = {"text": text, "output_ids": ids, "meta_info": {"completion_tokens": total}}
    return msgspec.convert(raw, Output)


@contextlib.asynccontextmanager
async def fake_engine(transport: str, **fake_options) -> AsyncIterator[tuple[SGLangEngine, Any]]:
    """A started backend over the HTTP fake, or over the in-process fake runtime."""
    live = None
    if transport == "http":
        fake = FakeSGLangServer(**fake_options)
        live = serve(fake.app())
        engine = SGLangEngine(SGLangConfig(url=live.url))
    else:
        runtime = FakeSGLangRuntime(**fake_options)
        fake = runtime.fake
        config = SGLangConfig(model_path="models/fake")
        inprocess = InProcessTransport(config, runtime, FakeGenerateReqInput)
        engine = SGLangEngine(config, transport=inprocess)
    try:
        await engine.start()
        yield engine, fake
    finally:
        await engine.close()
        if live is not None:
            live.stop()


TRANSPORTS = ["http", "inprocess"]


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_engine_against_fake_sglang(transport: str, incremental: bool) -> None:
    async with fake_engine(transport, incremental=incremental) as (engine, fake):
        assert engine.info.backend == "sglang" and engine.info.context_length == 2048
        assert await engine.tokenize("ab") == [97, 98]
        scheduling = Scheduling(objective="throughput", app_id="t/app", group_id="maps")
        filled = await engine.fill(
            FillRequest(context_id="px", text="System prompt. ", scheduling=scheduling)
        )
        fill_body = fake.bodies[-1]
        assert fill_body["sampling_params"]["max_new_tokens"] == 0
        assert fill_body["stream"] is False and fill_body["rid"] == "fill:px#"
        assert ParrotTag.decode(fill_body["routing_key"]).pin == "px"
        assert filled.num_tokens == len(b"System prompt. ")
        request = GenerateRequest(
            request_id="g1",
            context_id="c1",
            parent_context_id="px",
            prompt_text="Q?",
            sampling=SamplingParams(max_tokens=6, temperature=0.0),
            scheduling=scheduling,
            free_on_finish=True,
        )
        chunks = [c async for c in engine.generate(request)]
        body = fake.bodies[-1]
        assert body["input_ids"] == list(b"System prompt. Q?")  # the full context, replayed
        assert body["rid"] == "g1#" and "priority" not in body
        assert ParrotTag.decode(body["routing_key"]) == ParrotTag("throughput", 0, "t/app", "maps")
        assert "".join(c.text for c in chunks) == "sglang"
        assert sum(len(c.token_ids) for c in chunks) == 6
        assert all(c.logprobs is None for c in chunks)
        usage = chunks[-1].usage
        assert chunks[-1].finish_reason == "length" and usage.completion_tokens == 6
        assert usage.cached_tokens == len(b"System prompt. ")  # the fill's prefix was cached
        await engine.free("px")
        unpin = fake.bodies[-1]
        assert ParrotTag.decode(unpin["routing_key"]).unpin == "px"
        assert unpin["sampling_params"]["max_new_tokens"] == 0 and len(unpin["input_ids"]) == 1


@pytest.mark.parametrize("incremental", [False, True], ids=["cumulative", "incremental"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_logprobs_through_the_engine(transport: str, incremental: bool) -> None:
    async with fake_engine(transport, incremental=incremental) as (engine, fake):
        request = GenerateRequest(
            request_id="lp",
            context_id="lp",
            prompt_token_ids=[1, 2],
            sampling=SamplingParams(max_tokens=5, temperature=0.0, logprobs=3),
            free_on_finish=True,
        )
        chunks = [c async for c in engine.generate(request)]
        assert fake.bodies[-1]["top_logprobs_num"] == 3
        logprobs = [lp for c in chunks for lp in c.logprobs]
        assert [lp.token_id for lp in logprobs] == list(b"sglan")
        assert all(c.token_ids == [lp.token_id for lp in c.logprobs] for c in chunks)
        assert [lp.logprob for lp in logprobs] == [-(i + 1) / 8 for i in range(5)]
        top = logprobs[1].top
        assert [t.token_id for t in top] == [ord("g"), ord("g") + 1, ord("g") + 2]
        assert top[1].logprob == -2 / 8 - 1 and top[2].logprob == -math.inf


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_abort_sends_the_terminated_rid(transport: str) -> None:
    async with fake_engine(transport, delay_s=0.01) as (engine, fake):
        request = GenerateRequest(
            request_id="long",
            context_id="long",
            prompt_token_ids=[1, 2, 3],
            sampling=SamplingParams(max_tokens=200),
        )
        stream = engine.generate(request)
        await anext(stream)
        await engine.abort("long")
        with pytest.raises(RequestAborted):
            async for _ in stream:
                pass
        assert fake.aborts == ["long#"]  # terminated: does not also abort "long2..."
        assert (await engine.stats()).num_running == 0
        await engine.free("long")


@pytest.mark.skipif(not os.environ.get("PARROT_SGLANG_URL"), reason="PARROT_SGLANG_URL is not set")
async def test_real_sglang_server() -> None:
    """Against `python -m sglang.launch_server --model-path M` (GPU), ideally with
    SGLANG_PLUGINS=parrot and --enable-priority-scheduling."""
    engine = SGLangEngine(SGLangConfig(url=os.environ["PARROT_SGLANG_URL"]))
    await engine.start()
    try:
        ids = await engine.tokenize("The capital of France is")
        filled = await engine.fill(FillRequest(context_id="p", token_ids=ids))
        assert filled.num_tokens == len(ids)
        request = GenerateRequest(
            request_id="s1",
            context_id="s1",
            parent_context_id="p",
            prompt_token_ids=[],
            sampling=SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True),
            free_on_finish=True,
        )
        chunks = [c async for c in engine.generate(request)]
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 8
        assert chunks[-1].usage.cached_tokens > 0  # the filled prefix hit the radix cache
        await engine.free("p")
    finally:
        await engine.close()
