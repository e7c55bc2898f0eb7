"""The `EngineClient` protocol: what the gateway may ask of any engine, local or remote."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from engine.protocol import (
    ChatMessage,
    EngineInfo,
    EngineStats,
    FillRequest,
    FillResult,
    GenerateChunk,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
)


@runtime_checkable
class EngineClient(Protocol):
    """One engine. Implementations: builtin (in process), remote (HTTP), echo, openai, sim."""

    @property
    def info(self) -> EngineInfo: ...

    async def start(self) -> None:
        """Load models / open connections. Idempotent."""

    async def close(self) -> None:
        """Stop work and release resources."""

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    async def detokenize(self, token_ids: Sequence[int]) -> str: ...

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        """Apply the model's chat template."""

    async def fill(self, request: FillRequest) -> FillResult: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Stream chunks; closing the iterator early aborts the request."""

    async def abort(self, request_id: str) -> None: ...

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        """New scheduling for the work in flight on a context; engines without a scheduler
        of their own (echo, an OpenAI upstream) answer found=False."""

    async def free(self, context_id: str) -> None: ...

    async def stats(self) -> EngineStats: ...

    async def health(self) -> bool: ...
