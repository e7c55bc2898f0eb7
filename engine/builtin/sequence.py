"""Request state inside the builtin engine: one fill or generate bound to one context."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.builtin.contexts import Context
from engine.protocol import Scheduling, TokenLogprob


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    context: Context
    scheduling: Scheduling
    arrival: float
    # Called on the engine thread with each event; the engine hands events to asyncio.
    sink: Callable[[Any], None]
    sampling: Any = None  # SamplingParams for generate requests, None for a pure fill
    detokenizer: Any = None
    generator: torch.Generator | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    pending_text: str = ""  # decoded but held back (could still become a stop string)
    emitted_text_len: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    status: Status = Status.WAITING
    order_key: tuple = ()
    admitted: bool = False  # admitted at least once (cache hits count only the first time)
    free_on_finish: bool = False

    @property
    def is_fill(self) -> bool:
        return self.sampling is None

    @property
    def is_latency(self) -> bool:
        return self.scheduling.objective == "latency"
