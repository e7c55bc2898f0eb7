"""The OpenAI-compatible upstream backend against real OpenAI endpoints over HTTP: our own
gateway (echo engine, a streaming fake, the real embedded model) and vLLM when present."""

from __future__ import annotations

import asyncio
import os

import httpx
import msgspec
import pytest
from backend_support import serve

from engine.echo import EchoEngine
from engine.errors import (
    ContextBusy,
    ContextLengthExceeded,
    EngineUnavailable,
    InvalidRequest,
    RequestAborted,
    UnknownContext,
)
from engine.openai.config import PriorityMapping, UpstreamConfig
from engine.openai.engine import OpenAIEngine
from engine.openai.errors import upstream_error
from engine.openai.requests import completion_body
from engine.openai.tokenizer import EngineTokenizer, load_local_tokenizer
from engine.protocol import (
    ChatMessage,
    FillRequest,
    GenerateRequest,
    SamplingParams,
    Scheduling,
)
from gateway.app import create_app
from gateway.settings import Settings


def _engine(url: str, **config) -> OpenAIEngine:
    return OpenAIEngine(
        UpstreamConfig(base_url=f"{url}/v1", **config), EngineTokenizer(EchoEngine())
    )


def _request(rid: str, ctx: str, prompt: str | None = None, **kw) -> GenerateRequest:
    sampling = kw.pop("sampling", SamplingParams(max_tokens=8, temperature=0.0))
    return GenerateRequest(
        request_id=rid, context_id=ctx, prompt_text=prompt, sampling=sampling, **kw
    )


async def _collect(engine: OpenAIEngine, request: GenerateRequest):
    return [c async for c in engine.generate(request)]


async def test_fill_fork_generate_free(echo_upstream) -> None:
    engine = _engine(echo_upstream.url, parrot_extension=True)
    await engine.start()
    try:
        assert engine.info.backend == "openai" and engine.info.model == "echo"
        assert engine.info.supports_fork is False and engine.info.context_length == 8192
        filled = await engine.fill(FillRequest(context_id="p", text="Shared prefix. "))
        assert filled.num_tokens == len(b"Shared prefix. ") and filled.cached_tokens == 0
        chunks = await _collect(engine, _request("r1", "c1", "Question?", parent_context_id="p"))
        last = chunks[-1]
        assert last.finish_reason == "length"
        assert "".join(c.text for c in chunks) == "Polly wa"
        # The whole context (parent + own prompt) was replayed as the upstream prompt.
        assert last.usage.prompt_tokens == len(b"Shared prefix. Question?")
        assert last.usage.completion_tokens == 8
        # Generated tokens joined the context: the next turn replays them too.
        more = await _collect(engine, _request("r2", "c1", " Next"))
        assert more[-1].usage.prompt_tokens == len(b"Shared prefix. Question?Polly wa Next")
        with pytest.raises(ContextBusy):
            await engine.free("p")  # c1 still forks it
        await engine.free("c1")
        await engine.free("p")
        with pytest.raises(UnknownContext):
            await engine.free("p")
        stats = await engine.stats()
        assert stats.num_contexts == 0 and stats.generated_tokens == 16
    finally:
        await engine.close()


async def test_tokenizer_and_chat_template_come_from_the_local_tokenizer(echo_upstream) -> None:
    engine = _engine(echo_upstream.url)
    await engine.start()
    try:
        assert await engine.tokenize("hi") == [104, 105]
        assert await engine.detokenize([104, 105]) == "hi"
        text = await engine.render_chat([ChatMessage("user", "hi")])
        assert text == "<user>hi\n<assistant>"
    finally:
        await engine.close()


async def test_streaming_passes_through_and_abort_stops_the_upstream(streaming_upstream) -> None:
    live, fake = streaming_upstream
    engine = _engine(live.url)
    await engine.start()
    try:
        chunks = await _collect(engine, _request("s1", "s1", "go", free_on_finish=True))
        assert len(chunks) == 8 and "".join(c.text for c in chunks) == "abcdefgh"
        assert [c.finish_reason for c in chunks[:-1]] == [None] * 7
        assert chunks[-1].token_ids == [ord("h")] and chunks[-1].usage.completion_tokens == 8

        sampling = SamplingParams(max_tokens=200, temperature=0.0)
        stream = engine.generate(_request("s2", "s2", "go", sampling=sampling))
        first = await anext(stream)
        assert first.text == "a"
        before = fake.aborted
        await engine.abort("s2")
        with pytest.raises(RequestAborted):
            async for _ in stream:
                pass
        for _ in range(100):  # the upstream notices the disconnect and stops generating
            if fake.aborted > before:
                break
            await asyncio.sleep(0.02)
        assert fake.aborted > before
        await engine.free("s2")
    finally:
        await engine.close()


async def test_errors_map_to_engine_errors(echo_upstream) -> None:
    # Configured larger than the upstream's window: the upstream's 400 comes back typed.
    engine = _engine(echo_upstream.url, context_length=100_000)
    await engine.start()
    try:
        sampling = SamplingParams(max_tokens=9000)
        with pytest.raises(ContextLengthExceeded, match="upstream"):
            await _collect(engine, _request("e1", "e1", "x", sampling=sampling))
        with pytest.raises(ContextLengthExceeded):  # our own check, before any request
            await _collect(
                engine, _request("e2", "e2", "x", sampling=SamplingParams(max_tokens=200_000))
            )
        logprobs = SamplingParams(max_tokens=2, logprobs=1)  # the echo engine reports none
        with pytest.raises(InvalidRequest, match="does not report logprobs"):
            await _collect(engine, _request("e3", "e3", "x", sampling=logprobs))
    finally:
        await engine.close()
    missing = _engine(echo_upstream.url, model="no-such-model")
    with pytest.raises(EngineUnavailable, match="does not serve"):
        await missing.start()
    await missing.close()
    dead = _engine("http://127.0.0.1:9", connect_timeout_s=0.5)
    with pytest.raises(EngineUnavailable, match="unreachable"):
        await dead.start()
    assert await dead.health() is False
    await dead.close()


def test_upstream_error_mapping() -> None:
    body = b'{"error": {"message": "bad top_p", "type": "invalid_request_error", "param": "top_p"}}'
    error = upstream_error("u", 400, body)
    assert isinstance(error, InvalidRequest) and error.param == "top_p"
    flat = b'{"object": "error", "message": "This model\'s maximum context length is 4096"}'
    assert isinstance(upstream_error("u", 400, flat), ContextLengthExceeded)
    for status in (401, 429, 500, 503):
        assert isinstance(upstream_error("u", status, b"oops"), EngineUnavailable)
    assert isinstance(upstream_error("u", 499, b""), RequestAborted)


def test_completion_body_maps_objectives_and_extensions() -> None:
    sampling = SamplingParams(max_tokens=5, top_k=4, ignore_eos=True, stop=["\n"], seed=3)
    latency = Scheduling(objective="latency", priority=2, group_id="g")
    vllm = UpstreamConfig(base_url="u", priority=PriorityMapping("priority", higher_first=False))
    body = completion_body(vllm, "m", [1, 2], sampling, latency)
    assert body["prompt"] == [1, 2] and body["stream"] is True
    assert body["top_k"] == 4 and body["ignore_eos"] is True and body["stop"] == ["\n"]
    assert body["priority"] == -12  # vLLM runs lower values first: latency work goes first
    throughput = Scheduling(objective="throughput", priority=2)
    sgl = UpstreamConfig(base_url="u", priority=PriorityMapping("priority"))
    assert completion_body(sgl, "m", [1], sampling, throughput)["priority"] == 2
    parrot = UpstreamConfig(base_url="u", parrot_extension=True)
    assert completion_body(parrot, "m", [1], sampling, latency)["parrot"] == {
        "objective": "latency",
        "priority": 2,
        "group_id": "g",
    }
    assert "priority" not in completion_body(
        UpstreamConfig(base_url="u"), "m", [1], sampling, latency
    )
    hosted = UpstreamConfig(base_url="u", sampling_extensions=False)
    with pytest.raises(InvalidRequest) as info:
        completion_body(hosted, "m", [1], sampling, latency)
    assert info.value.param == "top_k"


async def test_an_upstream_engine_serves_a_parrot_gateway(echo_upstream) -> None:
    """Gateway -> OpenAIEngine -> upstream gateway -> echo: the OpenAI API end to end."""
    engine = _engine(echo_upstream.url)
    outer = serve(create_app(Settings(health_interval_s=0.2), [engine]))
    try:
        async with httpx.AsyncClient(base_url=outer.url, timeout=30) as client:
            body = {"model": "echo", "messages": [{"role": "user", "content": "Hi"}]}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["choices"][0]["message"]["content"] == "Polly wants a cracker."
            assert answer["usage"]["prompt_tokens"] == len(b"<user>Hi\n<assistant>")
    finally:
        outer.stop()


@pytest.mark.e2e
async def test_real_builtin_engine_through_its_openai_endpoint() -> None:
    live = serve(create_app(Settings(health_interval_s=0.5)), timeout_s=300)
    engine = OpenAIEngine(UpstreamConfig(base_url=f"{live.url}/v1"), load_local_tokenizer(None))
    try:
        await engine.start()
        assert engine.info.model.lower().startswith("smollm2")
        prompt = await engine.render_chat([ChatMessage("user", "What is the capital of France?")])
        ids = await engine.tokenize(prompt)
        request = GenerateRequest(
            request_id="b1",
            context_id="b1",
            prompt_token_ids=ids,
            sampling=SamplingParams(max_tokens=4, temperature=0.0),
            free_on_finish=True,
        )
        chunks = await _collect(engine, request)
        assert chunks[-1].finish_reason in ("length", "stop")
        assert chunks[-1].usage.prompt_tokens == len(ids)
        assert "".join(c.text for c in chunks).strip()
    finally:
        await engine.close()
        live.stop()


@pytest.mark.skipif(not os.environ.get("PARROT_VLLM_URL"), reason="PARROT_VLLM_URL is not set")
async def test_vllm_upstream() -> None:
    """Against a running vLLM (`vllm serve MODEL`): its own /tokenize, lower-first priority."""
    url = os.environ["PARROT_VLLM_URL"].rstrip("/")
    engine = OpenAIEngine(UpstreamConfig(base_url=f"{url}/v1", tokenizer="upstream"))
    await engine.start()
    try:
        ids = await engine.tokenize("The capital of France is")
        await engine.fill(FillRequest(context_id="v", token_ids=ids))
        greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        forked = {"parent_context_id": "v", "prompt_token_ids": [], "free_on_finish": True}
        chunks = await _collect(engine, _request("v1", "v1", sampling=greedy, **forked))
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 4
        assert await engine.detokenize(ids) == "The capital of France is"
        # Logprobs come back named by id (return_tokens_as_token_ids) and map exactly.
        with_logprobs = msgspec.structs.replace(greedy, logprobs=2)
        chunks = await _collect(engine, _request("v2", "v2", sampling=with_logprobs, **forked))
        ids_out = [t for c in chunks for t in c.token_ids]
        logprobs = [lp for c in chunks for lp in c.logprobs or ()]
        assert [lp.token_id for lp in logprobs] == ids_out and len(ids_out) == 4
        for lp in logprobs:  # greedy: the sampled token is the most likely one
            assert len(lp.top) == 2 and lp.top[0].token_id == lp.token_id
            assert lp.logprob <= 0 and abs(lp.top[0].logprob - lp.logprob) < 1e-3
        await engine.free("v")
    finally:
        await engine.close()
