"""`SGLangConfig`: one SGLang behind the engine protocol, a launched server or in process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SGLangConfig:
    """Exactly one of `url` (a launched server) and `model_path` (an `sglang.Engine` run in
    this process) is set."""

    url: str | None = None  # the server root, e.g. http://127.0.0.1:30000
    model_path: str | None = None  # in process: sglang.Engine(model_path=..., **runtime_args)
    runtime_args: tuple[tuple[str, Any], ...] = ()  # more of SGLang's ServerArgs (tp_size, ...)
    model: str | None = None  # default: the served model (/v1/models, or the runtime's)
    engine_id: str | None = None  # default: "sglang@<url or model_path>"
    context_length: int | None = None  # default: what the server or runtime reports
    tokenizer: str = "auto"  # as UpstreamConfig.tokenizer: a local one if given, else SGLang's
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

    def __post_init__(self) -> None:
        if (self.url is None) == (self.model_path is None):
            raise ValueError("an SGLang engine needs a server url or a model path (not both)")

    @property
    def in_process(self) -> bool:
        return self.model_path is not None

    @property
    def location(self) -> str:
        return (self.url or "").rstrip("/") or str(self.model_path)

    def priority(self, objective: str, priority: int) -> int:
        rank = priority + (self.latency_boost if objective == "latency" else 0)
        return rank if self.higher_priority_first else -rank
