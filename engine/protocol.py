"""Wire types of the gateway <-> engine protocol (msgspec), shared by in-process and HTTP engines.

The protocol is context-oriented: a context is a token sequence with its KV cache. `fill`
extends one (creating it, optionally as a fork of a parent), `generate` samples tokens into
it, `free` releases it, `reschedule` changes the scheduling of the work in flight on it.
Forked contexts share the parent's KV blocks.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from engine.errors import InvalidRequest

Objective = Literal["latency", "throughput"]
FinishReason = Literal["stop", "length", "abort", "error"]

# Upper bounds that keep a request from asking the engine for absurd work.
MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20


class SamplingParams(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """How to pick tokens. `validate()` raises InvalidRequest naming the bad field."""

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None
    stop: list[str] = []
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token plus k alternatives
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def validate(self, vocab_size: int | None = None) -> None:
        def bad(field: str, why: str) -> InvalidRequest:
            return InvalidRequest(f"'{field}' {why}", param=field)

        if self.max_tokens < 1:
            raise bad("max_tokens", f"must be at least 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise bad("min_tokens", "must be between 0 and max_tokens")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 100.0):
            raise bad("temperature", f"must be in [0, 100], got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise bad("top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise bad("stop", f"allows at most {MAX_STOP_STRINGS} strings")
        if any(not s for s in self.stop):
            raise bad("stop", "must not contain empty strings")
        if vocab_size is not None and any(not 0 <= t < vocab_size for t in self.stop_token_ids):
            raise bad("stop_token_ids", f"must be token ids in [0, {vocab_size})")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise bad("logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}]")
        if not (math.isfinite(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0):
            raise bad("repetition_penalty", "must be in (0, 10]")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2.0 <= value <= 2.0):
                raise bad(name, f"must be in [-2, 2], got {value}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise bad("seed", "must be a non-negative 63-bit integer")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


class Scheduling(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """Parrot's hooks into the engine's local scheduler."""

    objective: Objective = "latency"
    priority: int = 0  # higher runs first within an objective class
    group_id: str | None = None  # a task group: admitted and batched together
    app_id: str | None = None  # app-FIFO: work of apps that started earlier goes first
    # Latency-critical work is sent the moment this finishes (the next link of a chain):
    # an engine may keep throughput work off for a moment so that it does not wait.
    followup: bool = False


def outranks(a: Scheduling, b: Scheduling) -> bool:
    """Whether work scheduled as `a` runs before work scheduled as `b` (latency first)."""
    return (a.objective == "latency", a.priority) > (b.objective == "latency", b.priority)


class RescheduleRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Run the work in flight on `context_id` (its fill or generate) under new scheduling.

    Objectives are deduced from GETs, which may arrive after a call was sent: a client
    that starts waiting with `criteria=latency` must not leave the call queued as
    background work.
    """

    context_id: str
    scheduling: Scheduling


class Rescheduled(msgspec.Struct, frozen=True):
    found: bool  # False: nothing in flight there (finished already), or no local scheduler


class FillRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Extend `context_id` with tokens (prefill). A new context may fork `parent_context_id`."""

    context_id: str
    parent_context_id: str | None = None
    token_ids: list[int] | None = None
    text: str | None = None
    scheduling: Scheduling = Scheduling()


class FillResult(msgspec.Struct, frozen=True):
    context_id: str
    num_tokens: int  # length of the context after the fill
    cached_tokens: int  # tokens whose KV was reused instead of computed


class GenerateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Fill `prompt_token_ids` (or `prompt_text`) into the context, then sample into it."""

    request_id: str
    context_id: str
    parent_context_id: str | None = None
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None
    sampling: SamplingParams = SamplingParams()
    scheduling: Scheduling = Scheduling()
    free_on_finish: bool = False  # one-shot requests: release the context when done


class TopLogprob(msgspec.Struct, frozen=True, array_like=True):
    token_id: int
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    token_id: int
    logprob: float
    top: list[TopLogprob]


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class ErrorInfo(msgspec.Struct, frozen=True):
    code: str
    message: str
    param: str | None = None


class GenerateChunk(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """Tokens produced since the last chunk; the last chunk carries finish_reason and usage."""

    request_id: str
    token_ids: list[int] = []
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None


class ChatMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str
    content: str


class EngineInfo(msgspec.Struct, frozen=True, kw_only=True):
    engine_id: str
    backend: str  # builtin | echo | openai | sglang | sim
    model: str
    context_length: int
    vocab_size: int
    block_size: int
    supports_fork: bool = True
    supports_penalties: bool = True


class EngineStats(msgspec.Struct, kw_only=True):
    engine_id: str
    num_running: int = 0
    num_waiting: int = 0
    num_latency_running: int = 0
    num_contexts: int = 0
    total_blocks: int = 0
    free_blocks: int = 0
    cached_blocks: int = 0  # free but holding reusable prefix KV
    peak_used_blocks: int = 0
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    preemptions: int = 0

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks
