"""LangChain's `ChatOpenAI(base_url=...)` works unchanged against the gateway."""

from __future__ import annotations

import pytest
from gateway_support import Live

from engine.echo import ECHO_REPLY

langchain_openai = pytest.importorskip("langchain_openai")


@pytest.fixture(scope="module")
def llm(echo_gateway: Live):  # type: ignore[no-untyped-def]
    return langchain_openai.ChatOpenAI(
        base_url=echo_gateway.base_url, api_key="unused", model="echo", max_retries=0
    )


def test_invoke(llm) -> None:  # type: ignore[no-untyped-def]
    message = llm.invoke([("system", "You are a parrot."), ("user", "Say hi.")])
    assert message.content == ECHO_REPLY
    assert message.usage_metadata["output_tokens"] == len(ECHO_REPLY)


def test_stream(llm) -> None:  # type: ignore[no-untyped-def]
    parts = [chunk.content for chunk in llm.stream("Say hi.")]
    assert "".join(parts) == ECHO_REPLY


def test_batch(llm) -> None:  # type: ignore[no-untyped-def]
    replies = llm.batch(["one", "two", "three"])
    assert [r.content for r in replies] == [ECHO_REPLY] * 3


async def test_async_invoke_with_options(llm) -> None:  # type: ignore[no-untyped-def]
    bound = llm.bind(max_tokens=5, stop=["x"], temperature=0.0)
    message = await bound.ainvoke("Say hi.")
    assert message.content == ECHO_REPLY[:5]
