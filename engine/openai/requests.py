"""From a `GenerateRequest` to the JSON body of an upstream `/v1/completions` stream."""

from __future__ import annotations

from typing import Any

from engine.errors import InvalidRequest
from engine.openai.config import UpstreamConfig
from engine.protocol import SamplingParams, Scheduling


def _extensions(sampling: SamplingParams) -> dict[str, Any]:
    """vLLM-style fields outside OpenAI's spec, only where they differ from their defaults."""
    fields: dict[str, Any] = {}
    if sampling.top_k > 0:
        fields["top_k"] = sampling.top_k
    if sampling.min_tokens:
        fields["min_tokens"] = sampling.min_tokens
    if sampling.ignore_eos:
        fields["ignore_eos"] = True
    if sampling.repetition_penalty != 1.0:
        fields["repetition_penalty"] = sampling.repetition_penalty
    if sampling.stop_token_ids:
        fields["stop_token_ids"] = list(sampling.stop_token_ids)
    if sampling.include_stop_str_in_output:
        fields["include_stop_str_in_output"] = True
    return fields


def completion_body(
    config: UpstreamConfig,
    model: str,
    prompt_ids: list[int],
    sampling: SamplingParams,
    scheduling: Scheduling,
) -> dict[str, Any]:
    """The streamed completion of `prompt_ids` (the whole context, replayed)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    extensions = _extensions(sampling)
    if extensions and not config.sampling_extensions:
        name = next(iter(extensions))
        raise InvalidRequest(
            f"'{name}' needs sampling extensions, which this upstream is configured without",
            param=name,
        )
    body.update(extensions)
    if sampling.logprobs is not None:
        body["logprobs"] = sampling.logprobs
        if config.sampling_extensions:
            # Parrot's logprobs name tokens by id; vLLM and Parrot can name them so too.
            body["return_tokens_as_token_ids"] = True
    if config.request_token_ids:
        body["return_token_ids"] = True
    mapping = config.priority
    if mapping.field is not None:
        body[mapping.field] = mapping.value(scheduling.objective, scheduling.priority)
    if config.parrot_extension:
        parrot: dict[str, Any] = {
            "objective": scheduling.objective,
            "priority": scheduling.priority,
        }
        if scheduling.group_id is not None:
            parrot["group_id"] = scheduling.group_id
        body["parrot"] = parrot
    return body
