"""SGLang's generate outputs and what Parrot reads from them: tokens, text, finish, logprobs.

The same outputs arrive streamed or not, over HTTP or in process.

Shapes as SGLang's tokenizer manager builds them (`srt/managers/tokenizer_manager.py`):
`meta_info.output_token_logprobs` is a list of `[logprob, token_id, text]` (text null unless
`return_text_in_logprobs`), `meta_info.output_top_logprobs` one list of such entries per
position (or null). Both run parallel to `output_ids`: cumulative in the default streaming
mode, sliced to the new tokens with `--incremental-streaming-output`. A logprob of -inf
arrives as null over HTTP (JSON has no infinities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from engine.errors import EngineError, EngineUnavailable, RequestAborted
from engine.openai.errors import upstream_error
from engine.protocol import FinishReason, TokenLogprob, TopLogprob


class FinishInfo(msgspec.Struct, frozen=True):
    type: str
    message: str | None = None
    status_code: int | None = None  # set on aborts SGLang decided itself


class LogprobEntry(msgspec.Struct, frozen=True, array_like=True):
    logprob: float | None
    token_id: int
    text: str | None = None


class MetaInfo(msgspec.Struct, frozen=True):
    finish_reason: FinishInfo | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    output_token_logprobs: list[LogprobEntry] | None = None
    output_top_logprobs: list[list[LogprobEntry] | None] | None = None


class Output(msgspec.Struct, frozen=True):
    """One streamed (or the only non-streamed) generate output."""

    text: str | None = None
    output_ids: list[int] = []
    meta_info: MetaInfo = MetaInfo()
    error: Any = None


OUTPUT = msgspec.json.Decoder(Output)
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


def finish_reason(info: FinishInfo | None) -> FinishReason | None:
    return None if info is None else _FINISH.get(info.type, "stop")


def abort_error(where: str, request_id: str, by_us: bool, info: FinishInfo) -> EngineError:
    if by_us:
        return RequestAborted(f"request '{request_id}' was aborted")
    # SGLang aborted it itself (a priority sent to a server without priority scheduling, a
    # full queue, ...): its status code says whose fault it was.
    body = msgspec.json.encode({"error": {"message": info.message or "aborted by sglang"}})
    return upstream_error(where, info.status_code or 503, body)


def _value(logprob: float | None) -> float:
    return -math.inf if logprob is None else logprob


def token_logprobs(meta: MetaInfo, start: int, count: int) -> list[TokenLogprob] | None:
    """The logprobs of the `count` tokens from `start` in this output's lists (None when the
    output carries none)."""
    chosen = meta.output_token_logprobs
    if chosen is None:
        return None
    if len(chosen) < start + count:
        raise EngineUnavailable(
            f"sglang reported {len(chosen) - start} logprobs for {count} new tokens"
        )
    tops = meta.output_top_logprobs or []
    result = []
    for i in range(start, start + count):
        row = (tops[i] if i < len(tops) else None) or []
        top = [TopLogprob(t.token_id, _value(t.logprob)) for t in row]
        result.append(TokenLogprob(chosen[i].token_id, _value(chosen[i].logprob), top))
    return result


class Delta(NamedTuple):
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None


@dataclass(slots=True)
class Deltas:
    """New ids, text and logprobs per output, in either of SGLang's streaming modes:
    cumulative (the default: each output repeats everything so far) or
    `--incremental-streaming-output`."""

    num_ids: int = 0
    num_chars: int = 0

    def step(self, output: Output) -> Delta:
        ids, text = output.output_ids, output.text or ""
        # Cumulative outputs hold as many ids as have been generated in all.
        cumulative = len(ids) == output.meta_info.completion_tokens and len(ids) >= self.num_ids
        start = self.num_ids if cumulative else 0
        if cumulative:
            new_ids, new_text = ids[start:], text[self.num_chars :]
            self.num_chars = len(text)
        else:
            new_ids, new_text = list(ids), text
            self.num_chars += len(text)
        self.num_ids += len(new_ids)
        logprobs = token_logprobs(output.meta_info, start, len(new_ids))
        return Delta(list(new_ids), new_text, logprobs)
