"""Echo engine: answers at once with a fixed short completion and no model.

It exists to measure the gateway's own overhead (`parrot bench gateway`) and to test the
gateway without a model. It is not a model: every completion is the same text. It keeps
no KV cache; contexts are token lists so that fill/fork/free follow the protocol.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence

from engine.errors import ContextBusy, ContextExists, InvalidRequest, UnknownContext
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
    Usage,
)

ECHO_REPLY = "Polly wants a cracker."
VOCAB_SIZE = 256  # byte-level tokens


class EchoEngine:
    """A protocol-complete engine with a byte tokenizer and a canned reply."""

    def __init__(self, engine_id: str = "echo-0", model: str = "echo", context_length: int = 8192):
        self._info = EngineInfo(
            engine_id=engine_id,
            backend="echo",
            model=model,
            context_length=context_length,
            vocab_size=VOCAB_SIZE,
            block_size=16,
        )
        self._contexts: dict[str, list[int]] = {}
        self._parents: dict[str, str] = {}
        self._children: dict[str, int] = {}
        self._requests = itertools.count()
        self._generated = 0
        self._prompt_tokens = 0

    @property
    def info(self) -> EngineInfo:
        return self._info

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._contexts.clear()

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        return bytes(token_ids).decode(errors="replace")

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        text = "".join(f"<{m.role}>{m.content}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def _extend(self, context_id: str, parent: str | None, tokens: list[int]) -> list[int]:
        if context_id not in self._contexts:
            base: list[int] = []
            if parent is not None:
                if parent not in self._contexts:
                    raise UnknownContext(f"unknown parent context '{parent}'")
                base = list(self._contexts[parent])
                self._children[parent] = self._children.get(parent, 0) + 1
                self._parents[context_id] = parent
            self._contexts[context_id] = base
        elif parent is not None:
            raise ContextExists(f"context '{context_id}' already exists")
        ctx = self._contexts[context_id]
        if len(ctx) + len(tokens) > self._info.context_length:
            raise InvalidRequest("context too long")
        ctx.extend(tokens)
        self._prompt_tokens += len(tokens)
        return ctx

    async def fill(self, request: FillRequest) -> FillResult:
        tokens = request.token_ids or list((request.text or "").encode())
        ctx = self._extend(request.context_id, request.parent_context_id, tokens)
        return FillResult(request.context_id, len(ctx), 0)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        request.sampling.validate(VOCAB_SIZE)
        prompt = request.prompt_token_ids or list((request.prompt_text or "").encode())
        ctx = self._extend(request.context_id, request.parent_context_id, prompt)
        reply = ECHO_REPLY.encode()[: request.sampling.max_tokens]
        ctx.extend(reply)
        self._generated += len(reply)
        finish = "length" if len(reply) == request.sampling.max_tokens else "stop"
        try:
            yield GenerateChunk(
                request_id=request.request_id,
                token_ids=list(reply),
                text=reply.decode(errors="replace"),
                finish_reason=finish,
                usage=Usage(len(prompt), len(reply)),
            )
        finally:
            if request.free_on_finish:
                await self.free(request.context_id)

    async def abort(self, request_id: str) -> None:
        return None

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        return Rescheduled(False)  # answers at once: nothing waits to be scheduled

    async def free(self, context_id: str) -> None:
        if context_id not in self._contexts:
            raise UnknownContext(f"unknown context '{context_id}'")
        if self._children.get(context_id):
            raise ContextBusy(f"context '{context_id}' still has live children")
        del self._contexts[context_id]
        parent = self._parents.pop(context_id, None)
        if parent is not None:
            self._children[parent] -= 1

    async def stats(self) -> EngineStats:
        return EngineStats(
            engine_id=self._info.engine_id,
            num_contexts=len(self._contexts),
            prompt_tokens=self._prompt_tokens,
            generated_tokens=self._generated,
        )

    async def health(self) -> bool:
        return True
