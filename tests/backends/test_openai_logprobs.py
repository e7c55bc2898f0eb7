"""Logprobs through the OpenAI-compatible upstream backend: token names mapped back to ids,
and greedy logprobs through a Parrot upstream equal to the builtin engine's own."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgspec
import pytest
from backend_support import Live, serve

from engine.builtin.engine import BuiltinEngine
from engine.builtin.options import EngineOptions
from engine.echo import EchoEngine
from engine.errors import InvalidRequest
from engine.openai.config import UpstreamConfig
from engine.openai.engine import OpenAIEngine
from engine.openai.logprobs import TokenNames
from engine.openai.requests import completion_body
from engine.openai.tokenizer import EngineTokenizer, LocalTokenizer, UpstreamTokenizer
from engine.openai.wire import CompletionLogprobs
from engine.protocol import ChatMessage, GenerateRequest, SamplingParams, Scheduling, TokenLogprob
from gateway.app import create_app
from gateway.settings import Settings

# A streamed vLLM completion event's `logprobs` with `return_tokens_as_token_ids` and
# `logprobs: 2`: `top_logprobs` lists the sampled token first, and when it is not among
# the 2 most likely (position 1, sampled at temperature > 0) it is a third entry.
VLLM_LOGPROBS = {
    "text_offset": [0, 12],
    "token_logprobs": [-0.25, -3.5],
    "tokens": ["token_id:11", "token_id:40"],
    "top_logprobs": [
        {"token_id:11": -0.25, "token_id:12": -1.75},
        {"token_id:40": -3.5, "token_id:41": -0.5, "token_id:42": -1.0},
    ],
}


def _names() -> TokenNames:
    return TokenNames(EngineTokenizer(EchoEngine()))  # byte tokens: 97 is "a"


async def test_token_id_names_map_exactly_and_keep_the_k_most_likely() -> None:
    upstream = msgspec.convert(VLLM_LOGPROBS, CompletionLogprobs)
    logprobs = await _names().logprobs(upstream, 2)
    assert [(lp.token_id, lp.logprob) for lp in logprobs] == [(11, -0.25), (40, -3.5)]
    assert [(t.token_id, t.logprob) for t in logprobs[1].top] == [(41, -0.5), (42, -1.0)]
    assert [t.token_id for t in logprobs[0].top] == [11, 12]
    assert all(lp.top == [] for lp in await _names().logprobs(upstream, 0))
    # Ids the upstream reported for the sampled tokens win over their names.
    assert [lp.token_id for lp in await _names().logprobs(upstream, 1, [7, 8])] == [7, 8]


async def test_text_names_map_only_where_one_id_has_that_text() -> None:
    names = _names()
    assert await names.id_of("a") == 97
    assert await names.id_of("token_id:300") == 300
    # Every byte >= 128 alone decodes to U+FFFD: which one was meant cannot be known.
    with pytest.raises(InvalidRequest, match="several token ids"):
        await names.id_of("\ufffd")
    with pytest.raises(InvalidRequest, match="no single token id"):
        await names.id_of("ab")
    with pytest.raises(InvalidRequest, match="not a token id"):
        await names.id_of("token_id:x")
    # Only a local tokenizer has a vocabulary to search; the upstream's /tokenize has none.
    remote = TokenNames(UpstreamTokenizer(httpx.AsyncClient(), "http://127.0.0.1:9", "m"))
    with pytest.raises(InvalidRequest, match="local tokenizer"):
        await remote.id_of("a")
    assert await remote.id_of("token_id:5") == 5


def test_completion_body_asks_for_logprobs_by_id_where_extensions_are_allowed() -> None:
    sampling = SamplingParams(max_tokens=2, logprobs=3)
    config = UpstreamConfig(base_url="u")
    body = completion_body(config, "m", [1], sampling, Scheduling())
    assert body["logprobs"] == 3 and body["return_tokens_as_token_ids"] is True
    hosted = UpstreamConfig(base_url="u", sampling_extensions=False)
    body = completion_body(hosted, "m", [1], sampling, Scheduling())
    assert body["logprobs"] == 3 and "return_tokens_as_token_ids" not in body
    assert "logprobs" not in completion_body(config, "m", [1], SamplingParams(), Scheduling())


def _tiny_engine(model, engine_id: str) -> BuiltinEngine:
    return BuiltinEngine(model, EngineOptions(engine_id=engine_id, dtype="float32", num_blocks=256))


@pytest.fixture(scope="module")
def tiny_upstream(tiny_model) -> Iterator[Live]:
    """A Parrot gateway over the builtin engine with the tiny random-weight model."""
    app = create_app(
        Settings(local_engine=False, health_interval_s=0.2), [_tiny_engine(tiny_model, "up")]
    )
    live = serve(app)
    yield live
    live.stop()


async def _generate(engine, prompt: list[int], sampling: SamplingParams) -> list[TokenLogprob]:
    request = GenerateRequest(
        request_id="r",
        context_id="r",
        prompt_token_ids=prompt,
        sampling=sampling,
        free_on_finish=True,
    )
    chunks = [c async for c in engine.generate(request)]
    assert sum(len(c.token_ids) for c in chunks) == sum(len(c.logprobs or ()) for c in chunks)
    for c in chunks:
        assert c.token_ids == [lp.token_id for lp in c.logprobs or ()]
    return [lp for c in chunks for lp in c.logprobs or ()]


def _assert_same(got: list[TokenLogprob], want: list[TokenLogprob]) -> None:
    assert [lp.token_id for lp in got] == [lp.token_id for lp in want]
    for a, b in zip(got, want, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t.token_id for t in a.top] == [t.token_id for t in b.top]
        for x, y in zip(a.top, b.top, strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


@pytest.mark.parametrize("by_id", [True, False], ids=["token-id-names", "text-names"])
async def test_greedy_logprobs_through_a_parrot_upstream_equal_the_builtin_engines(
    tiny_model, tiny_upstream, by_id: bool
) -> None:
    tokenizer = tiny_model.tokenizer
    prompt = tokenizer.encode("Paris é café")  # the tiny model continues with " café"
    sampling = SamplingParams(max_tokens=4, temperature=0.0, logprobs=5)
    direct = _tiny_engine(tiny_model, "direct")
    await direct.start()
    config = UpstreamConfig(base_url=f"{tiny_upstream.url}/v1", sampling_extensions=by_id)
    upstream = OpenAIEngine(config, LocalTokenizer(tokenizer))
    await upstream.start()
    try:
        want = await _generate(direct, prompt, sampling)
        got = await _generate(upstream, prompt, sampling)
        assert len(want) == 4 and all(len(lp.top) == 5 for lp in want)
        _assert_same(got, want)
    finally:
        await upstream.close()
        await direct.close()


async def test_parrot_names_logprob_tokens_by_id_when_asked(tiny_upstream) -> None:
    body = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 2, "temperature": 0}
    async with httpx.AsyncClient(base_url=f"{tiny_upstream.url}/v1", timeout=60) as client:
        model = (await client.get("/models")).json()["data"][0]["id"]
        body["model"] = model
        plain = (await client.post("/completions", json=body | {"logprobs": 1})).json()
        named = await client.post(
            "/completions", json=body | {"logprobs": 1, "return_tokens_as_token_ids": True}
        )
        chat = await client.post(
            "/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1,
                "logprobs": True,
                "top_logprobs": 1,
                "return_tokens_as_token_ids": True,
            },
        )
    tokens = named.json()["choices"][0]["logprobs"]["tokens"]
    assert all(t.startswith("token_id:") for t in tokens) and len(tokens) == 2
    assert not any(t.startswith("token_id:") for t in plain["choices"][0]["logprobs"]["tokens"])
    content = chat.json()["choices"][0]["logprobs"]["content"][0]
    assert content["token"].startswith("token_id:")
    assert content["top_logprobs"][0]["token"].startswith("token_id:")


@pytest.mark.e2e
async def test_real_model_logprobs_through_a_parrot_upstream(embedded_model) -> None:
    """The real SmolLM2 answering a chat prompt: the same greedy tokens and logprobs."""
    options = EngineOptions(engine_id="up", dtype="float32", num_blocks=256)
    live = serve(create_app(Settings(local_engine=False), [BuiltinEngine(embedded_model, options)]))
    direct = BuiltinEngine(embedded_model, EngineOptions(dtype="float32", num_blocks=256))
    await direct.start()
    upstream = OpenAIEngine(
        UpstreamConfig(base_url=f"{live.url}/v1"), LocalTokenizer(embedded_model.tokenizer)
    )
    try:
        await upstream.start()
        chat = await upstream.render_chat([ChatMessage("user", "What is the capital of France?")])
        prompt = await upstream.tokenize(chat)
        sampling = SamplingParams(max_tokens=8, temperature=0.0, logprobs=5)
        want = await _generate(direct, prompt, sampling)
        got = await _generate(upstream, prompt, sampling)
        assert len(want) == 8
        _assert_same(got, want)
    finally:
        await upstream.close()
        await direct.close()
        live.stop()
