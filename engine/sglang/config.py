"""`SGLangConfig`: one SGLang server behind the engine protocol (frozen)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SGLangConfig:
    url: str  # the server root, e.g. http://127.0.0.1:30000
    model: str | None = None  # default: the served model from /v1/models
    engine_id: str | None = None  # default: "sglang@<url>"
    context_length: int | None = None  # default: max_model_len from /v1/models
    tokenizer: str = "auto"  # as UpstreamConfig.tokenizer: a local one if given, else /tokenize
    # SGLang's `priority`: sent only when the server runs --enable-priority-scheduling
    # (otherwise it is ignored, or the request aborted with --abort-on-priority-when-disabled).
    send_priority: bool = False
    # SGLang runs higher values first unless started with --schedule-low-priority-values-first.
    higher_priority_first: bool = True
    latency_boost: int = 10  # added to a latency-critical request's priority
    # Fill a context with a prefill-only request (max_new_tokens=0) and pin its radix node
    # (with the Parrot plugin loaded) until the context is freed.
    prefill_on_fill: bool = True
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    health_timeout_s: float = 2.0

    def priority(self, objective: str, priority: int) -> int:
        rank = priority + (self.latency_boost if objective == "latency" else 0)
        return rank if self.higher_priority_first else -rank
