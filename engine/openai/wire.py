"""Wire types of the OpenAI-compatible upstream: the completion stream, tokenize, models, errors.

Only the fields the backend reads are declared; msgspec ignores the rest, so vLLM's, SGLang's
and llama.cpp's additions pass through harmlessly. Request bodies are plain dicts built in
`requests.py`, because which extension fields they carry depends on the upstream.
"""

from __future__ import annotations

from typing import Any

import msgspec


class CompletionLogprobs(msgspec.Struct, frozen=True):
    """A completion choice's `logprobs` (the same object streamed or not). Tokens are named
    by their text, or as `token_id:<id>` where the server was asked to
    (`return_tokens_as_token_ids`: vLLM, Parrot)."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    # Per position {token name: logprob}; vLLM also lists the sampled token here.
    top_logprobs: list[dict[str, float] | None] | None = None


class StreamChoice(msgspec.Struct, frozen=True):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    # vLLM with `return_token_ids`: the ids sampled since the previous event.
    token_ids: list[int] | None = None
    logprobs: CompletionLogprobs | None = None


class PromptTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int | None = None


class UpstreamUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionEvent(msgspec.Struct, frozen=True):
    """One `data:` event of a streamed `/v1/completions` response."""

    choices: list[StreamChoice] = []
    usage: UpstreamUsage | None = None
    error: Any = None  # some servers report a failure inside the stream


class TokenizeResult(msgspec.Struct, frozen=True):
    tokens: list[int]


class DetokenizeResult(msgspec.Struct, frozen=True):
    prompt: str | None = None  # vLLM
    text: str | None = None  # SGLang


class ModelCard(msgspec.Struct, frozen=True):
    id: str
    max_model_len: int | None = None  # vLLM, SGLang and Parrot report it


class ModelList(msgspec.Struct, frozen=True):
    data: list[ModelCard] = []


class ErrorDetail(msgspec.Struct, frozen=True):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True):
    """`{"error": {...}}` (OpenAI, Parrot, SGLang) or vLLM's older flat `{"message", ...}`."""

    error: ErrorDetail | str | None = None
    message: str | None = None
    type: str | None = None
    code: str | int | None = None

    def detail(self) -> ErrorDetail:
        if isinstance(self.error, ErrorDetail):
            return self.error
        message = self.error if isinstance(self.error, str) else self.message
        return ErrorDetail(message or "", self.type, None, self.code)


EVENT = msgspec.json.Decoder(CompletionEvent)
TOKENIZE = msgspec.json.Decoder(TokenizeResult)
DETOKENIZE = msgspec.json.Decoder(DetokenizeResult)
MODELS = msgspec.json.Decoder(ModelList)
ERROR = msgspec.json.Decoder(ErrorEnvelope)
ENCODER = msgspec.json.Encoder()
