"""Every error the OpenAI routes return: status and OpenAI's body shape, over live servers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from gateway_support import (
    DownEngine,
    FailingEngine,
    Live,
    NoPenaltyEngine,
    assert_openai_error,
    serve,
    settings_for_tests,
)

from engine.echo import EchoEngine
from gateway.app import create_app

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Live]:
    engines = [EchoEngine(), NoPenaltyEngine(), DownEngine(), FailingEngine()]
    settings = settings_for_tests(max_body_bytes=100_000, retry_after_s=3)
    live = serve(create_app(settings, engines=engines))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def http(gateway: Live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


def chat(http: httpx.Client, **fields: object) -> httpx.Response:
    return http.post(CHAT, json={"model": "echo", "messages": MESSAGES, **fields})


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(CHAT, content=b'{"model": "echo", "messages": [')
    error = assert_openai_error(response, 400, "invalid_json")
    assert error["type"] == "invalid_request_error"


def test_missing_field(http: httpx.Client) -> None:
    response = http.post(CHAT, json={"model": "echo"})
    assert_openai_error(response, 400, "missing_required_parameter", "messages")
    response = http.post(CHAT, json={"model": "echo", "messages": [{"role": "user"}]})
    assert_openai_error(response, 400, "missing_required_parameter", "messages[0].content")


def test_wrong_types(http: httpx.Client) -> None:
    assert_openai_error(chat(http, max_tokens="ten"), 400, "invalid_type", "max_tokens")
    assert_openai_error(chat(http, stream="yes"), 400, "invalid_type", "stream")
    response = http.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": 1}]})
    assert_openai_error(response, 400, "invalid_type", "messages[0].content")


def test_invalid_values(http: httpx.Client) -> None:
    bad_role = {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}
    assert_openai_error(http.post(CHAT, json=bad_role), 400, "invalid_value", "messages[0].role")
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    with_image = {"model": "echo", "messages": [{"role": "user", "content": image}]}
    assert_openai_error(
        http.post(CHAT, json=with_image), 400, "invalid_value", "messages[0].content[0].type"
    )
    assert_openai_error(chat(http, n=0), 400, "invalid_value", "n")
    assert_openai_error(chat(http, max_tokens=0), 400, "invalid_value", "max_tokens")
    assert_openai_error(chat(http, temperature=500), 400, "invalid_value", "temperature")
    assert_openai_error(chat(http, top_p=0), 400, "invalid_value", "top_p")
    empty = {"model": "echo", "messages": []}
    assert_openai_error(http.post(CHAT, json=empty), 400, "invalid_value", "messages")


def test_unsupported_fields(http: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert_openai_error(chat(http, tools=tools), 400, "unsupported", "tools")
    assert_openai_error(chat(http, logit_bias={"1": 5}), 400, "unsupported", "logit_bias")
    schema = {"type": "json_schema"}
    assert_openai_error(chat(http, response_format=schema), 400, "unsupported", "response_format")
    assert_openai_error(chat(http, top_logprobs=2), 400, None, "top_logprobs")
    options = {"include_usage": True}
    assert_openai_error(chat(http, stream_options=options), 400, None, "stream_options")
    assert_openai_error(chat(http, parrot={"bogus": 1}), 400, "invalid_value", "parrot")
    called = [*MESSAGES, {"role": "assistant", "tool_calls": [{"id": "1"}]}]
    response = http.post(CHAT, json={"model": "echo", "messages": called})
    assert_openai_error(response, 400, "unsupported", "messages[1].tool_calls")


def test_penalties_on_an_engine_without_them(http: httpx.Client) -> None:
    response = http.post(
        CHAT, json={"model": "nopen", "messages": MESSAGES, "presence_penalty": 0.5}
    )
    assert_openai_error(response, 400, "unsupported", "presence_penalty")
    fine = http.post(CHAT, json={"model": "nopen", "messages": MESSAGES})
    assert fine.status_code == 200


def test_unknown_model(http: httpx.Client) -> None:
    response = chat(http, model="gpt-4o")
    error = assert_openai_error(response, 404, "model_not_found", "model")
    assert "gpt-4o" in error["message"]


def test_context_length_exceeded(http: httpx.Client) -> None:
    response = chat(http, max_tokens=8190)
    assert_openai_error(response, 400, "context_length_exceeded", "messages")
    long_prompt = {"model": "echo", "prompt": "x" * 9000}
    response = http.post("/v1/completions", json=long_prompt)
    assert_openai_error(response, 400, "context_length_exceeded", "prompt")


def test_no_healthy_engine_is_503_with_retry_after(http: httpx.Client) -> None:
    response = chat(http, model="down")
    error = assert_openai_error(response, 503, "engine_unavailable")
    assert error["type"] == "server_error"
    assert response.headers["retry-after"] == "3"


def test_body_too_large(http: httpx.Client) -> None:
    big = [{"role": "user", "content": "x" * 200_000}]
    response = http.post(CHAT, json={"model": "echo", "messages": big})
    assert_openai_error(response, 413, "request_too_large")


def test_completion_prompt_errors(http: httpx.Client) -> None:
    mixed = {"model": "echo", "prompt": ["a", 1]}
    assert_openai_error(http.post("/v1/completions", json=mixed), 400, None, "prompt")
    ids = {"model": "echo", "prompt": [1, 2, 100_000]}
    assert_openai_error(http.post("/v1/completions", json=ids), 400, None, "prompt")
    suffix = {"model": "echo", "prompt": "a", "suffix": "b"}
    assert_openai_error(http.post("/v1/completions", json=suffix), 400, "unsupported", "suffix")


def test_unknown_route(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nothing"), 404)
    assert_openai_error(http.get(CHAT), 405)


def test_mid_stream_error_is_an_error_frame(http: httpx.Client) -> None:
    body = {"model": "failing", "messages": MESSAGES, "stream": True}
    with http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert list(error) == ["error"]
    assert error["error"]["type"] == "server_error"
    assert error["error"]["code"] == "engine_error"
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "P"


def test_failure_before_the_stream_is_a_status(http: httpx.Client) -> None:
    body = {"model": "failing", "messages": MESSAGES}
    response = http.post(CHAT, json=body)
    assert_openai_error(response, 500, "engine_error")


def test_bad_requests_do_not_disturb_others(http: httpx.Client) -> None:
    for _ in range(3):
        http.post(CHAT, content=b"nonsense")
        assert chat(http).status_code == 200
