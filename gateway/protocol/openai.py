"""OpenAI request wire types (chat, completions), each owning its conversion to engine parameters.

Fields follow the order of OpenAI's API reference; extension fields are fenced after them:
vLLM-style top-level sampling fields (so clients written for vLLM work unchanged) and the
`parrot` object (reachable from the SDKs through `extra_body`). Unknown fields are ignored,
fields Parrot cannot honour are rejected with a 400 naming them, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from engine.protocol import ChatMessage, SamplingParams, Scheduling
from gateway.errors import bad_request, unsupported

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's legacy completions default

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
ChoiceCount = Annotated[int, Meta(ge=1, le=128)]


class TextPart(msgspec.Struct, frozen=True, tag_field="type", tag="text"):
    text: str


Content = str | list[TextPart]


def _text(content: Content | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(p.text for p in content)


class SystemMessage(msgspec.Struct, frozen=True, tag_field="role", tag="system"):
    content: Content
    name: str | None = None


class DeveloperMessage(msgspec.Struct, frozen=True, tag_field="role", tag="developer"):
    content: Content
    name: str | None = None


class UserMessage(msgspec.Struct, frozen=True, tag_field="role", tag="user"):
    content: Content
    name: str | None = None


class AssistantMessage(msgspec.Struct, frozen=True, tag_field="role", tag="assistant"):
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[Any] | None = None


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage


def _engine_role(message: Message) -> str:
    # The chat templates of open models know "system", not OpenAI's newer "developer".
    return (
        "system" if isinstance(message, DeveloperMessage) else type(message).__struct_config__.tag
    )


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ResponseFormat(msgspec.Struct, frozen=True):
    type: str = "text"


class ParrotOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parrot's extension object: scheduling hints for this request."""

    objective: Literal["latency", "throughput"] = "latency"
    priority: int = 0
    session_id: str | None = None
    group_id: str | None = None


class _SamplingMixin:
    """Behaviour shared by the chat and completion requests (their fields are declared in each,
    so that each keeps OpenAI's order with the extensions fenced at the end)."""

    __slots__ = ()
    frequency_penalty: float
    logit_bias: dict[str, float] | None
    presence_penalty: float
    seed: int | None
    stop: str | list[str] | None
    stream: bool
    stream_options: StreamOptions | None
    temperature: float
    top_p: float
    top_k: int | None
    min_tokens: int
    ignore_eos: bool
    repetition_penalty: float
    parrot: ParrotOptions | None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def _check_common(self) -> None:
        if self.logit_bias:
            raise unsupported("logit_bias", "biasing token logits")
        if self.stream_options is not None and not self.stream:
            raise bad_request(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )

    def _sampling(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k or 0, 0),
            seed=self.seed,
            stop=stop,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    def scheduling(self, tenant: str) -> Scheduling:
        options = self.parrot or ParrotOptions()
        # Sessions are tenant-scoped; so is the app id the engine schedules app-FIFO by.
        app_id = f"{tenant}/{options.session_id}" if options.session_id else None
        return Scheduling(
            objective=options.objective,
            priority=options.priority,
            group_id=options.group_id,
            app_id=app_id,
        )


class ChatCompletionRequest(msgspec.Struct, _SamplingMixin, frozen=True, kw_only=True):
    """`POST /v1/chat/completions`."""

    messages: Annotated[list[Message], Meta(min_length=1)]
    model: str
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    logprobs: bool = False
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    n: ChoiceCount = 1
    presence_penalty: float = 0.0
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = 1.0
    tool_choice: Any = None
    tools: list[Any] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    top_p: float = 1.0
    user: str | None = None
    # --- extensions: vLLM-style sampling fields ---
    top_k: int | None = None  # vLLM: -1 or 0 disables
    min_tokens: NonNegativeInt = 0
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    return_tokens_as_token_ids: bool = False  # vLLM: logprob tokens named "token_id:<id>"
    # --- extensions: Parrot ---
    parrot: ParrotOptions | None = None

    def check(self) -> None:
        """Reject what Parrot cannot honour, naming the field."""
        self._check_common()
        if self.tools:
            raise unsupported("tools", "tool calling")
        if self.response_format is not None and self.response_format.type != "text":
            raise unsupported("response_format", f"response format '{self.response_format.type}'")
        for i, message in enumerate(self.messages):
            if isinstance(message, AssistantMessage) and message.tool_calls:
                raise unsupported(f"messages[{i}].tool_calls", "tool calling")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")

    def engine_messages(self) -> list[ChatMessage]:
        return [ChatMessage(_engine_role(m), _text(m.content)) for m in self.messages]

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def sampling(self, max_tokens: int) -> SamplingParams:
        return self._sampling(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


PromptItem = str | int | list[int]


class CompletionRequest(msgspec.Struct, _SamplingMixin, frozen=True, kw_only=True):
    """`POST /v1/completions`: `prompt` is a string, strings, token ids, or lists of token ids."""

    model: str
    prompt: str | Annotated[list[PromptItem], Meta(min_length=1)]
    best_of: int | None = None
    echo: bool = False
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    max_tokens: PositiveInt | None = None
    n: ChoiceCount = 1
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    user: str | None = None
    # --- extensions: vLLM-style sampling fields ---
    top_k: int | None = None
    min_tokens: NonNegativeInt = 0
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    return_tokens_as_token_ids: bool = False  # vLLM: logprob tokens named "token_id:<id>"
    # --- extensions: Parrot ---
    parrot: ParrotOptions | None = None

    def check(self) -> None:
        self._check_common()
        if self.suffix:
            raise unsupported("suffix", "insertion with a suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise unsupported("best_of", "best_of different from n")
        if self.echo and self.logprobs is not None:
            raise unsupported("echo", "echo together with logprobs")

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids. Mixed lists are rejected."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        if all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
            return list(prompt)  # type: ignore[arg-type]
        raise bad_request(
            "'prompt' must be a string, a list of strings, a list of token ids, or a list of "
            "lists of token ids.",
            param="prompt",
        )

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else DEFAULT_COMPLETION_MAX_TOKENS

    def sampling(self, max_tokens: int) -> SamplingParams:
        return self._sampling(max_tokens, self.logprobs)


CHAT_DECODER = msgspec.json.Decoder(ChatCompletionRequest)
COMPLETION_DECODER = msgspec.json.Decoder(CompletionRequest)
