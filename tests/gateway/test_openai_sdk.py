"""The real `openai` SDK, sync and async, against a live gateway over EchoEngine."""

from __future__ import annotations

import openai
import pytest
from gateway_support import Live

from engine.echo import ECHO_REPLY

MESSAGES = [
    {"role": "system", "content": "You are a parrot."},
    {"role": "user", "content": "Say something."},
]


@pytest.fixture(scope="module")
def client(echo_gateway: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=echo_gateway.base_url, api_key="unused", max_retries=0)


@pytest.fixture
def async_client(echo_gateway: Live) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=echo_gateway.base_url, api_key="unused", max_retries=0)


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="echo", messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "echo"
    [choice] = reply.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == ECHO_REPLY
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    usage = reply.usage
    assert usage is not None
    assert usage.completion_tokens == len(ECHO_REPLY)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_content_parts_and_max_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        max_tokens=5,
    )
    assert reply.choices[0].message.content == ECHO_REPLY[:5]
    assert reply.choices[0].finish_reason == "length"
    reply = client.chat.completions.create(model="echo", messages=MESSAGES, max_completion_tokens=3)
    assert reply.choices[0].message.content == ECHO_REPLY[:3]


def test_raw_response_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=MESSAGES)
    assert raw.headers["x-parrot-engine"] == "echo-0"
    assert raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content == ECHO_REPLY


def test_n_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="echo", messages=MESSAGES, n=3, seed=7)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == ECHO_REPLY for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 3 * len(ECHO_REPLY)


def test_stop_is_passed_to_the_engine(client: openai.OpenAI) -> None:
    # EchoEngine ignores stop strings, but the request must be accepted in both shapes.
    for stop in ("cracker", ["wants", "x"]):
        reply = client.chat.completions.create(model="echo", messages=MESSAGES, stop=stop)
        assert reply.choices[0].message.content


def test_streaming_chat(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="echo", messages=MESSAGES, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ECHO_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is None


def test_streaming_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo",
        messages=MESSAGES,
        stream=True,
        n=2,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 2 * len(ECHO_REPLY)
    for index in (0, 1):
        parts = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert parts[0].delta.role == "assistant"
        assert "".join(p.delta.content or "" for p in parts) == ECHO_REPLY
        assert parts[-1].finish_reason == "stop"


def test_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="echo", prompt="Once upon a time")
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    # OpenAI's default of 16 tokens for legacy completions.
    assert reply.choices[0].text == ECHO_REPLY[:16]
    assert reply.choices[0].finish_reason == "length"


def test_completions_prompt_list_and_n(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="echo", prompt=["one", "two"], n=2, max_tokens=64)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.usage is not None and reply.usage.prompt_tokens == len("one") + len("two")


def test_completions_token_ids_and_echo(client: openai.OpenAI) -> None:
    prompt = list(b"Hi there")
    reply = client.completions.create(model="echo", prompt=prompt, echo=True, max_tokens=64)
    assert reply.choices[0].text == "Hi there" + ECHO_REPLY
    reply = client.completions.create(model="echo", prompt=[prompt, prompt], max_tokens=4)
    assert len(reply.choices) == 2


def test_completions_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="echo",
        prompt="abc",
        stream=True,
        echo=True,
        max_tokens=64,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "abc" + ECHO_REPLY
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3


def test_extensions_through_extra_body(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="echo",
        messages=MESSAGES,
        temperature=0.0,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        user="someone",
        extra_body={
            "top_k": 5,
            "min_tokens": 1,
            "ignore_eos": True,
            "repetition_penalty": 1.1,
            "parrot": {"objective": "throughput", "priority": 2, "group_id": "g1"},
        },
    )
    assert reply.choices[0].message.content == ECHO_REPLY


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["echo"]
    model = client.models.retrieve("echo")
    assert model.id == "echo" and model.object == "model" and model.owned_by == "parrot"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    # Hugging Face style ids carry a slash; the route must still reach the handler.
    with pytest.raises(openai.NotFoundError, match="org/nope"):
        client.models.retrieve("org/nope")


async def test_async_chat_and_stream(async_client: openai.AsyncOpenAI) -> None:
    reply = await async_client.chat.completions.create(model="echo", messages=MESSAGES)
    assert reply.choices[0].message.content == ECHO_REPLY
    stream = await async_client.chat.completions.create(
        model="echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text = ""
    usage = None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == ECHO_REPLY
    assert usage is not None and usage.completion_tokens == len(ECHO_REPLY)


async def test_async_completions_n(async_client: openai.AsyncOpenAI) -> None:
    reply = await async_client.completions.create(model="echo", prompt="x y z", n=2)
    assert len(reply.choices) == 2


def test_sdk_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=100_000)
    assert bad.value.code == "context_length_exceeded"
