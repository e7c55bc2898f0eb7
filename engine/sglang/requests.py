"""SGLang generate requests: `GenerateReqInput` fields, posted as JSON or passed in process.

Every request carries the full token ids of its context (`input_ids`), so forks of a shared
prefix become radix-cache hits; `rid` is the Parrot request id plus a terminator, because
SGLang aborts every request whose rid *starts with* the one given.
"""

from __future__ import annotations

from typing import Any

from engine.protocol import SamplingParams, Scheduling
from engine.sglang.config import SGLangConfig
from engine.sglang.tags import ParrotTag

RID_END = "#"


def rid_of(request_id: str) -> str:
    return request_id + RID_END


def sampling_params(sampling: SamplingParams) -> dict[str, Any]:
    """SGLang's sampling_params dict (names as in sglang/srt/sampling/sampling_params.py)."""
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
    logprobs: int | None = None,
) -> dict[str, Any]:
    """`logprobs`: None, or the number of alternatives to report with each sampled token."""
    body: dict[str, Any] = {
        "rid": rid,
        "input_ids": list(input_ids),  # a copy: in process, SGLang keeps the request
        "sampling_params": params,
        "stream": stream,
        "routing_key": tag.encode(),
    }
    if logprobs is not None:
        # -1: output tokens only (the replayed context is not scored again).
        body |= {"return_logprob": True, "top_logprobs_num": logprobs, "logprob_start_len": -1}
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
