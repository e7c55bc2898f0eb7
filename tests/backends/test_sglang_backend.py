"""The SGLang backend: request mapping, both streaming modes, fill pins, aborts - against a
named fake of SGLang's HTTP API, and against a real server when PARROT_SGLANG_URL is set."""

from __future__ import annotations

import os

import msgspec
import pytest
from backend_support import serve
from fake_sglang import FakeSGLangServer

from engine.errors import InvalidRequest, RequestAborted
from engine.protocol import FillRequest, GenerateRequest, SamplingParams, Scheduling
from engine.sglang.config import SGLangConfig
from engine.sglang.engine import SGLangEngine
from engine.sglang.requests import Deltas, Output, generate_body, rid_of, sampling_params, tag_for
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
    with pytest.raises(InvalidRequest):
        sampling_params(SamplingParams(logprobs=2))


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
    assert cumulative.step(out([1], "a", 1)) == ([1], "a")
    assert cumulative.step(out([1, 2], "ab", 2)) == ([2], "b")
    assert cumulative.step(out([1, 2, 3], "abc", 3)) == ([3], "c")
    incremental = Deltas()
    assert incremental.step(out([1], "a", 1)) == ([1], "a")
    assert incremental.step(out([2], "b", 2)) == ([2], "b")
    assert incremental.step(out([3], "c", 3)) == ([3], "c")


def _output(ids: list[int], text: str, total: int) -> Output:
    raw = {"text": text, "output_ids": ids, "meta_info": {"completion_tokens": total}}
    return msgspec.convert(raw, Output)


@pytest.mark.parametrize("incremental", [False, True])
async def test_engine_against_fake_sglang(incremental: bool) -> None:
    fake = FakeSGLangServer(incremental=incremental)
    live = serve(fake.app())
    engine = SGLangEngine(SGLangConfig(url=live.url))
    try:
        await engine.start()
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
        usage = chunks[-1].usage
        assert chunks[-1].finish_reason == "length" and usage.completion_tokens == 6
        assert usage.cached_tokens == len(b"System prompt. ")  # the fill's prefix was cached
        await engine.free("px")
        unpin = fake.bodies[-1]
        assert ParrotTag.decode(unpin["routing_key"]).unpin == "px"
        assert unpin["sampling_params"]["max_new_tokens"] == 0 and len(unpin["input_ids"]) == 1
    finally:
        await engine.close()
        live.stop()


async def test_abort_sends_the_terminated_rid() -> None:
    fake = FakeSGLangServer(delay_s=0.01)
    live = serve(fake.app())
    engine = SGLangEngine(SGLangConfig(url=live.url))
    try:
        await engine.start()
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
        await engine.free("long")
    finally:
        await engine.close()
        live.stop()


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
