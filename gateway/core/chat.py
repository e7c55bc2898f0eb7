"""The chat form of a semantic call: messages with placeholders -> one raw template.

The model's chat template must see the messages, but placeholders are only filled later.
So each placeholder is swapped for a private-use sentinel, the messages are rendered, and
the sentinels are swapped back:

    [user: "Summarise {{input:doc}}"]  ->  "<|im_start|>user\\nSummarise \\ue000 0 \\ue001..."
                                       ->  "<|im_start|>user\\nSummarise {{input:doc}}<|im_end|>
                                            <|im_start|>assistant\\n{{output:summary}}"

An output is an assistant turn: an assistant message whose whole content is one
`{{output:NAME}}`; without one, the single declared output becomes the reply to the
last message.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from engine.protocol import ChatMessage
from gateway.core.errors import TemplateError
from gateway.protocol.semantic import TemplateMessage

RenderChat = Callable[[Sequence[ChatMessage], bool], Awaitable[str]]

_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")
_SENTINEL = re.compile(_OPEN + r"(\d+)" + _CLOSE)
_OUTPUT_ONLY = re.compile(r"\{\{\s*output\s*:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _role(message: TemplateMessage) -> str:
    return "system" if message.role == "developer" else message.role


async def chat_template(
    messages: Sequence[TemplateMessage], outputs: Sequence[str], render: RenderChat
) -> str:
    """The raw template for these messages; `outputs` are the declared output names."""
    originals: list[str] = []

    def hide(match: re.Match[str]) -> str:
        originals.append(match.group(0))
        return f"{_OPEN}{len(originals) - 1}{_CLOSE}"

    hidden: list[ChatMessage] = []
    tail_output: str | None = None
    for i, message in enumerate(messages):
        param = f"messages[{i}].content"
        if _OPEN in message.content or _CLOSE in message.content:
            raise TemplateError("message content uses reserved characters U+E000/U+E001", param)
        only = _OUTPUT_ONLY.fullmatch(message.content.strip())
        if (
            "output" in message.content
            and _has_output(message.content)
            and not (message.role == "assistant" and only)
        ):
            raise TemplateError(
                "in the chat form an output must be the whole content of an assistant message",
                param,
            )
        if only and i == len(messages) - 1:
            tail_output = only.group(1)  # the reply being generated: rendered after the turn
            continue
        hidden.append(ChatMessage(_role(message), _PLACEHOLDER.sub(hide, message.content)))
    if tail_output is None and not any(_OUTPUT_ONLY.fullmatch(m.content.strip()) for m in messages):
        if len(outputs) != 1:
            raise TemplateError(
                "the chat form needs an assistant message '{{output:NAME}}', or exactly one "
                "declared output to be the reply",
                "outputs",
            )
        tail_output = outputs[0]
    if not hidden:
        raise TemplateError("the chat form needs at least one message before the reply", "messages")
    rendered = await render(hidden, tail_output is not None)
    if tail_output is not None:
        rendered += "{{output:" + tail_output + "}}"
    return _SENTINEL.sub(lambda m: originals[int(m.group(1))], rendered)


def _has_output(content: str) -> bool:
    return any(
        m.group(0)[2:].split(":", 1)[0].strip() == "output" for m in _PLACEHOLDER.finditer(content)
    )
