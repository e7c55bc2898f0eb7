"""Template parsing and the chat form, as unit tests."""

from __future__ import annotations

import pytest

from engine.echo import EchoEngine
from gateway.core.chat import chat_template
from gateway.core.errors import TemplateError
from gateway.core.template import Input, Output, Text, parse_template
from gateway.protocol.semantic import TemplateMessage


def test_segments_names_and_leading_text() -> None:
    t = parse_template("Sys. {{input:a}} x {{ output : b }} y {{input:a}} {{output:c}}\n  ")
    assert t.segments == (
        Text("Sys. "),
        Input("a"),
        Text(" x "),
        Output("b"),
        Text(" y "),
        Input("a"),
        Text(" "),
        Output("c"),
    )
    assert (t.inputs, t.outputs, t.leading_text) == (("a",), ("b", "c"), "Sys. ")
    assert parse_template("{{input:a}} {{output:b}}").leading_text == ""


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("a {{input:x", "never closed"),
        ("a {{input:x {{output:y}}", "never closed"),
        ("a }} {{output:y}}", "closes nothing"),
        ("a {{x}} {{output:y}}", "has no kind"),
        ("a {{var:x}} {{output:y}}", "unknown kind 'var'"),
        ("a {{input:}} {{output:y}}", "not a valid name"),
        ("just text", "no '{{output:NAME}}'"),
        ("{{output:y}}", "comes first"),
        ("a {{output:y}} b", "text after the last output"),
        ("a {{output:y}}{{output:y}}", "appears twice"),
        ("a {{input:y}}{{output:y}}", "both as an input and as an output"),
    ],
)
def test_every_template_problem_is_named(template: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(template)
    assert fragment in info.value.message and info.value.status == 400


def messages(*pairs: tuple[str, str]) -> list[TemplateMessage]:
    return [TemplateMessage(role=r, content=c) for r, c in pairs]  # type: ignore[arg-type]


async def test_chat_form_renders_with_placeholders_kept() -> None:
    render = EchoEngine().render_chat
    raw = await chat_template(
        messages(("system", "S"), ("user", "do {{input:t}}")), ["out"], render
    )
    assert raw == "<system>S\n<user>do {{input:t}}\n<assistant>{{output:out}}"
    raw = await chat_template(
        messages(
            ("user", "q1 {{input:a}}"),
            ("assistant", "{{output:r1}}"),
            ("user", "q2"),
            ("assistant", "{{output:r2}}"),
        ),
        ["r1", "r2"],
        render,
    )
    assert (
        raw == "<user>q1 {{input:a}}\n<assistant>{{output:r1}}\n<user>q2\n<assistant>{{output:r2}}"
    )
    assert parse_template(raw).outputs == ("r1", "r2")


async def test_chat_form_errors() -> None:
    render = EchoEngine().render_chat
    with pytest.raises(TemplateError, match="whole content of an assistant"):
        await chat_template(messages(("user", "x {{output:o}}")), ["o"], render)
    with pytest.raises(TemplateError, match="exactly one"):
        await chat_template(messages(("user", "x")), ["a", "b"], render)
    with pytest.raises(TemplateError, match="reserved"):
        await chat_template(messages(("user", "x \ue000")), ["o"], render)
