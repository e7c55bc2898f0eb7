"""Prompt templates: `{{input:name}}` / `{{output:name}}` placeholders cut into segments.

    "You are an expert. Write {{input:task}}. Code: {{output:code}}"
     └─ Text ──────────────┘└─ Input ───┘└─ Text ┘└─ Output ───┘

Every `{{` opens a placeholder and must be closed by `}}`; a placeholder names its kind
(`input` or `output`) and an identifier. Text after the last output is only allowed when
it is whitespace: nothing would ever read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.core.errors import TemplateError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS = ("input", "output")
MAX_TEMPLATE_CHARS = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Input:
    name: str


@dataclass(frozen=True, slots=True)
class Output:
    name: str


Segment = Text | Input | Output


@dataclass(frozen=True, slots=True)
class Template:
    segments: tuple[Segment, ...]
    inputs: tuple[str, ...]  # in order of first use
    outputs: tuple[str, ...]  # in generation order

    @property
    def leading_text(self) -> str:
        """The constant text before the first placeholder (the shareable prefix)."""
        first = self.segments[0]
        return first.text if isinstance(first, Text) else ""


def _placeholder(body: str, offset: int, param: str) -> Input | Output:
    kind, sep, name = body.partition(":")
    kind, name = kind.strip(), name.strip()
    shown = "{{" + body + "}}"
    if not sep:
        raise TemplateError(
            f"placeholder '{shown}' at offset {offset} has no kind: write "
            "'{{input:NAME}}' or '{{output:NAME}}'",
            param,
        )
    if kind not in _KINDS:
        raise TemplateError(
            f"placeholder '{shown}' at offset {offset} has unknown kind '{kind}' "
            "(expected 'input' or 'output')",
            param,
        )
    if not _NAME.fullmatch(name):
        raise TemplateError(
            f"placeholder '{shown}' at offset {offset}: '{name}' is not a valid name "
            "(letters, digits and '_', not starting with a digit)",
            param,
        )
    return Input(name) if kind == "input" else Output(name)


def _cut(template: str, param: str) -> list[Segment]:
    segments: list[Segment] = []
    pos = 0
    while True:
        opening = template.find("{{", pos)
        stray = template.find("}}", pos)
        if stray != -1 and (opening == -1 or stray < opening):
            raise TemplateError(
                f"unbalanced braces: '}}}}' at offset {stray} closes nothing", param
            )
        if opening == -1:
            if pos < len(template):
                segments.append(Text(template[pos:]))
            return segments
        closing = template.find("}}", opening + 2)
        nested = template.find("{{", opening + 2)
        if closing == -1 or (nested != -1 and nested < closing):
            raise TemplateError(
                f"unbalanced braces: '{{{{' at offset {opening} is never closed", param
            )
        if opening > pos:
            segments.append(Text(template[pos:opening]))
        segments.append(_placeholder(template[opening + 2 : closing], opening, param))
        pos = closing + 2


def parse_template(template: str, param: str = "template") -> Template:
    """Parse and check a template; every problem is a TemplateError (400) naming it."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters", param)
    segments = _cut(template, param)
    inputs: list[str] = []
    outputs: list[str] = []
    for segment in segments:
        if isinstance(segment, Input) and segment.name not in inputs:
            inputs.append(segment.name)
        elif isinstance(segment, Output):
            if segment.name in outputs:
                raise TemplateError(f"output '{segment.name}' appears twice", param)
            outputs.append(segment.name)
    if not outputs:
        raise TemplateError("the template has no '{{output:NAME}}' placeholder", param)
    if both := sorted(set(inputs) & set(outputs)):
        raise TemplateError(f"'{both[0]}' is used both as an input and as an output", param)
    if isinstance(segments[0], Output):
        raise TemplateError(
            f"output '{segments[0].name}' comes first: there is no prompt to generate from",
            param,
        )
    last = max(i for i, s in enumerate(segments) if isinstance(s, Output))
    for segment in segments[last + 1 :]:
        if not (isinstance(segment, Text) and not segment.text.strip()):
            raise TemplateError(
                f"text after the last output '{outputs[-1]}' would never be used; end the "
                "template with an output",
                param,
            )
    return Template(tuple(segments[: last + 1]), tuple(inputs), tuple(outputs))
