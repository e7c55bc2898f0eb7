"""Wire-format helpers: validation-error params, logprob conversion, request conversion."""

from __future__ import annotations

import msgspec
import pytest

from engine.protocol import TokenLogprob, TopLogprob
from gateway.errors import ApiError, from_validation, validation_param
from gateway.protocol.openai import CHAT_DECODER, COMPLETION_DECODER
from gateway.serving.logprobs import TokenTexts, chat_logprobs, completion_logprobs


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ("Expected `str`, got `int` - at `$.messages[0].role`", "messages[0].role"),
        ("Object missing required field `messages`", "messages"),
        ("Object missing required field `role` - at `$.messages[2]`", "messages[2].role"),
        ("Expected `int` >= 1 - at `$.n`", "n"),
        ("Expected `object`, got `array`", None),
    ],
)
def test_validation_param(message: str, param: str | None) -> None:
    assert validation_param(message) == param


def test_validation_error_codes() -> None:
    def error(raw: bytes) -> ApiError:
        with pytest.raises(msgspec.ValidationError) as info:
            CHAT_DECODER.decode(raw)
        return from_validation(info.value)

    assert error(b'{"model": "m"}').code == "missing_required_parameter"
    assert error(b'{"model": 1, "messages": []}').code == "invalid_type"
    wrong = error(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}')
    assert (wrong.code, wrong.param, wrong.status) == ("invalid_value", "n", 400)


def test_chat_request_conversion() -> None:
    raw = (
        b'{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", '
        b'"text": "a"}, {"type": "text", "text": "b"}]}, {"role": "assistant"}], '
        b'"stop": "x", "top_k": -1, "logprobs": true, "top_logprobs": 3, "seed": 5, '
        b'"parrot": {"objective": "throughput", "session_id": "s"}}'
    )
    request = CHAT_DECODER.decode(raw)
    request.check()
    assert [(m.role, m.content) for m in request.engine_messages()] == [
        ("system", "ab"),
        ("assistant", ""),
    ]
    sampling = request.sampling(max_tokens=7)
    assert (sampling.max_tokens, sampling.stop, sampling.top_k) == (7, ["x"], 0)
    assert (sampling.logprobs, sampling.seed) == (3, 5)
    scheduling = request.scheduling("acme")
    assert scheduling.objective == "throughput" and scheduling.app_id == "acme/s"


def test_completion_prompt_shapes() -> None:
    def prompts(value: object) -> list[str | list[int]]:
        return COMPLETION_DECODER.decode(
            msgspec.json.encode({"model": "m", "prompt": value})
        ).prompts()

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    with pytest.raises(ApiError):
        prompts(["a", [1]])


async def test_logprob_conversion() -> None:
    calls: list[list[int]] = []

    async def detokenize(ids: list[int]) -> str:
        calls.append(ids)
        return {1: "He", 2: "llo", 3: "y"}[ids[0]]

    logprobs = [
        TokenLogprob(1, -0.1, [TopLogprob(1, -0.1), TopLogprob(3, -2.0)]),
        TokenLogprob(2, -0.5, [TopLogprob(2, -0.5)]),
    ]
    cache = TokenTexts()
    texts = await cache.lookup("m", logprobs, detokenize)
    assert await cache.lookup("m", logprobs, detokenize) == texts
    assert len(calls) == 3  # each token once, then cached
    chat = chat_logprobs(logprobs, texts)
    assert chat.content is not None
    assert [t.token for t in chat.content] == ["He", "llo"]
    assert chat.content[0].bytes == list(b"He")
    assert [t.token for t in chat.content[0].top_logprobs] == ["He", "y"]
    legacy = completion_logprobs(logprobs, texts, offset=4)
    assert legacy.tokens == ["He", "llo"]
    assert legacy.text_offset == [4, 6]
    assert legacy.top_logprobs == [{"He": -0.1, "y": -2.0}, {"llo": -0.5}]
