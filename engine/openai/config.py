"""`UpstreamConfig`: how to reach an OpenAI-compatible server and which of its extensions to use."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PriorityMapping:
    """How a request's objective and priority reach the upstream's own scheduler.

    `field` names the request body field (vLLM and SGLang call it `priority`; None sends
    nothing: both reject a priority unless started with priority scheduling on). The value
    sent is `priority + latency_boost` for latency-critical work, `priority` otherwise, and
    is negated when the upstream runs lower values first (vLLM; SGLang's default is higher
    first, flipped by its `--schedule-low-priority-values-first`).
    """

    field: str | None = None
    higher_first: bool = True
    latency_boost: int = 10

    def value(self, objective: str, priority: int) -> int:
        rank = priority + (self.latency_boost if objective == "latency" else 0)
        return rank if self.higher_first else -rank


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream server. Unset `model`/`context_length` are read from `/v1/models`."""

    base_url: str  # e.g. http://127.0.0.1:8001/v1
    model: str | None = None
    api_key: str | None = None
    engine_id: str | None = None  # default: "openai@<base_url>"
    context_length: int | None = None
    vocab_size: int | None = None  # default: the local tokenizer's, else unchecked
    # "auto": the local tokenizer when one is given, else the upstream's /tokenize;
    # "upstream" / "local" insist on one.
    tokenizer: str = "auto"
    priority: PriorityMapping = field(default_factory=PriorityMapping)
    # Send the Parrot extension object (objective, priority, group) - for a Parrot upstream.
    parrot_extension: bool = False
    # vLLM-style fields outside OpenAI's spec (top_k, min_tokens, ignore_eos, ...,
    # return_tokens_as_token_ids). Off for hosted APIs that reject unknown fields: then
    # asking for those sampling fields is an error, and logprob tokens come back as text.
    sampling_extensions: bool = True
    # vLLM >= 0.10.2 returns the sampled token ids when asked (`return_token_ids`).
    request_token_ids: bool = False
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    health_timeout_s: float = 2.0

    @property
    def root_url(self) -> str:
        """The server root (tokenize endpoints live there, next to `/v1`)."""
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url
