"""SGLang `/generate` bodies (GenerateReqInput as JSON) and its streamed outputs.

Every request carries the full token ids of its context (`input_ids`), so forks of a shared
prefix become radix-cache hits; `rid` is the Parrot request id plus a terminator, because
SGLang aborts every request whose rid *starts with* the one given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from engine.errors import EngineError, InvalidRequest, RequestAborted
from engine.openai.errors import upstream_error
from engine.protocol import FinishReason, SamplingParams, Scheduling
from engine.sglang.config import SGLangConfig
from engine.sglang.tags import ParrotTag

RID_END = "#"


def rid_of(request_id: str) -> str:
    return request_id + RID_END


def sampling_params(sampling: SamplingParams) -> dict[str, Any]:
    """SGLang's sampling_params dict (names as in sglang/srt/sampling/sampling_params.py)."""
    if sampling.logprobs is not None:
        raise InvalidRequest("logprobs are not supported by the sglang backend", "logprobs")
    params: dict[str, Any] = {
        "max_new_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    optional: dict[str, Any] = {
        "top_k": sampling.top_k if sampling.top_k > 0 else None,  # absent: whole vocabulary
        "min_new_tokens": sampling.min_tokens or None,
        "stop": list(sampling.stop) or None,
        "stop_token_ids": list(sampling.stop_token_ids) or None,
        "ignore_eos": sampling.ignore_eos or None,
        "no_stop_trim": sampling.include_stop_str_in_output or None,
        "repetition_penalty": (
            None if sampling.repetition_penalty == 1.0 else sampling.repetition_penalty
        ),
        "presence_penalty": sampling.presence_penalty or None,
        "frequency_penalty": sampling.frequency_penalty or None,
        "sampling_seed": sampling.seed,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def generate_body(
    config: SGLangConfig,
    rid: str,
    input_ids: list[int],
    params: dict[str, Any],
    scheduling: Scheduling,
    tag: ParrotTag,
    stream: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "rid": rid,
        "input_ids": input_ids,
        "sampling_params": params,
        "stream": stream,
        "routing_key": tag.encode(),
    }
    if config.send_priority:
        body["priority"] = config.priority(scheduling.objective, scheduling.priority)
    return body


def tag_for(scheduling: Scheduling, **declare: str) -> ParrotTag:
    return ParrotTag(
        objective=scheduling.objective,
        priority=scheduling.priority,
        app_id=scheduling.app_id,
        group_id=scheduling.group_id,
        **declare,
    )


class FinishInfo(msgspec.Struct, frozen=True):
    type: str
    message: str | None = None
    status_code: int | None = None  # set on aborts SGLang decided itself


class MetaInfo(msgspec.Struct, frozen=True):
    finish_reason: FinishInfo | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Output(msgspec.Struct, frozen=True):
    """One streamed (or the only non-streamed) `/generate` output."""

    text: str | None = None
    output_ids: list[int] = []
    meta_info: MetaInfo = MetaInfo()
    error: Any = None


OUTPUT = msgspec.json.Decoder(Output)
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


def finish_reason(info: FinishInfo | None) -> FinishReason | None:
    return None if info is None else _FINISH.get(info.type, "stop")


def abort_error(url: str, request_id: str, by_us: bool, info: FinishInfo) -> EngineError:
    if by_us:
        return RequestAborted(f"request '{request_id}' was aborted")
    # SGLang aborted it itself (a priority sent to a server without priority scheduling, a
    # full queue, ...): its status code says whose fault it was.
    body = msgspec.json.encode({"error": {"message": info.message or "aborted by sglang"}})
    return upstream_error(url, info.status_code or 503, body)


@dataclass(slots=True)
class Deltas:
    """New ids and text per output, in either of SGLang's streaming modes: cumulative (the
    default: each output repeats everything so far) or `--incremental-streaming-output`."""

    num_ids: int = 0
    num_chars: int = 0

    def step(self, output: Output) -> tuple[list[int], str]:
        ids, text = output.output_ids, output.text or ""
        # Cumulative outputs hold as many ids as have been generated in all.
        cumulative = len(ids) == output.meta_info.completion_tokens and len(ids) >= self.num_ids
        if cumulative:
            new_ids, new_text = ids[self.num_ids :], text[self.num_chars :]
            self.num_chars = len(text)
        else:
            new_ids, new_text = list(ids), text
            self.num_chars += len(text)
        self.num_ids += len(new_ids)
        return list(new_ids), new_text
