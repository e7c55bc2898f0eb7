"""Wire types of the semantic-variable API: sessions, variables, semantic calls and graphs.

Requests are decoded strictly (unknown fields rejected, so a typo is a 400, not silence);
responses omit absent fields. The shapes are documented in docs/semantic_variables.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from engine.protocol import SamplingParams

Criteria = Literal["latency", "throughput"]
VariableState = Literal["pending", "ready", "failed"]
Name = Annotated[str, Meta(min_length=1, max_length=128)]

DEFAULT_MAX_TOKENS = 128
MAX_CALLS_PER_GRAPH = 512


class SessionCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions`. `cache_salt` keeps this session's shared prefixes to itself."""

    idle_ttl_s: Annotated[float, Meta(gt=0, le=7 * 24 * 3600)] | None = None
    cache_salt: Annotated[str, Meta(max_length=256)] | None = None


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: Literal["session"] = "session"
    created_at: float = 0.0
    idle_ttl_s: float = 0.0


class VariableCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions/{sid}/variables`: an input (with a value) or a placeholder to set."""

    name: Name
    value: str | None = None


class VariableSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`PUT /v1/sessions/{sid}/variables/{vid}`."""

    value: str


class VariableView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A variable as GET returns it; `value` only once ready."""

    id: str
    name: str
    ready: bool
    status: VariableState
    value: str | None = None


class Binding(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What fills an `{{input:NAME}}`: a variable id, a literal, or (in a graph) `"3.code"`,
    the output `code` of the graph's call at index 3. Exactly one of them."""

    var: str | None = None
    value: str | None = None
    ref: str | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.var, self.value, self.ref))
        if given != 1:
            raise ValueError("give exactly one of 'var', 'value' or 'ref'")


class OutputSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to generate one output, and optionally the (existing, unset) variable it fills."""

    max_tokens: Annotated[int, Meta(ge=1)] = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: Annotated[int, Meta(ge=0)] = 0
    min_tokens: Annotated[int, Meta(ge=0)] = 0
    seed: int | None = None
    stop: list[str] = []
    ignore_eos: bool = False
    var: str | None = None
    name: Name | None = None  # the new variable's name (default: the placeholder's)

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            min_tokens=self.min_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=list(self.stop),
            ignore_eos=self.ignore_eos,
        )


class TemplateMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A chat message of the chat form; `content` may hold placeholders."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class CallRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions/{sid}/calls`: a template or chat messages, bound to variables."""

    model: str
    template: str | None = None
    messages: list[TemplateMessage] | None = None
    inputs: dict[str, Binding] = {}
    outputs: dict[str, OutputSpec] = {}
    criteria: Criteria | None = None

    def __post_init__(self) -> None:
        if (self.template is None) == (self.messages is None):
            raise ValueError("give exactly one of 'template' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")


class CallCreated(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    outputs: dict[str, str]  # output name -> variable id


class GraphRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/sessions/{sid}/graph`: many calls at once; `ref` bindings link them."""

    calls: Annotated[list[CallRequest], Meta(min_length=1, max_length=MAX_CALLS_PER_GRAPH)]


class GraphCreated(msgspec.Struct, frozen=True, kw_only=True):
    calls: list[CallCreated]


class StreamDelta(msgspec.Struct, frozen=True):
    """One SSE frame of a streamed variable: text generated since the previous frame."""

    id: str
    delta: str


SESSION_CREATE = msgspec.json.Decoder(SessionCreate)
VARIABLE_CREATE = msgspec.json.Decoder(VariableCreate)
VARIABLE_SET = msgspec.json.Decoder(VariableSet)
CALL_REQUEST = msgspec.json.Decoder(CallRequest)
GRAPH_REQUEST = msgspec.json.Decoder(GraphRequest)
