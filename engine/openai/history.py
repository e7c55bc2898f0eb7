"""Contexts as token histories, for engines that cannot hold KV across requests.

An upstream engine (OpenAI-compatible, SGLang) keeps no context between requests, so each
context is the token list that will be replayed as the prompt of its next generate. A fork
copies its parent's tokens; the upstream's own prefix cache (vLLM's block hashes, SGLang's
radix tree) is what turns the replayed shared prefix into cache hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import (
    ContextBusy,
    ContextExists,
    ContextLengthExceeded,
    InvalidRequest,
    UnknownContext,
)


@dataclass(slots=True, eq=False)
class History:
    context_id: str
    parent: History | None = None
    token_ids: list[int] = field(default_factory=list)
    num_children: int = 0
    busy: bool = False  # a request is generating into it


class HistoryTable:
    def __init__(self, context_length: int) -> None:
        self.context_length = context_length
        self._contexts: dict[str, History] = {}

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, context_id: str) -> bool:
        return context_id in self._contexts

    def get(self, context_id: str) -> History:
        try:
            return self._contexts[context_id]
        except KeyError:
            raise UnknownContext(f"context '{context_id}' does not exist") from None

    def open(self, context_id: str, parent_id: str | None) -> tuple[History, bool]:
        """The context to extend, created (forked from `parent_id`) when new: (ctx, created)."""
        ctx = self._contexts.get(context_id)
        if ctx is not None:
            if parent_id is not None and (ctx.parent is None or ctx.parent.context_id != parent_id):
                raise ContextExists(f"context '{context_id}' already exists with another parent")
            if ctx.busy:
                raise ContextBusy(f"context '{context_id}' has a request in flight")
            return ctx, False
        parent = self.get(parent_id) if parent_id is not None else None
        if parent is not None and parent.busy:
            raise ContextBusy(f"context '{parent_id}' has a request in flight")
        ctx = History(context_id, parent, list(parent.token_ids) if parent else [])
        if parent is not None:
            parent.num_children += 1
        self._contexts[context_id] = ctx
        return ctx, True

    def extend(self, ctx: History, tokens: list[int], to_generate: int, created: bool) -> None:
        """Append prompt tokens, checking room for `to_generate` more; undoes a creation."""
        total = len(ctx.token_ids) + len(tokens)
        problem: Exception | None = None
        if to_generate and not total:
            problem = InvalidRequest("the prompt is empty", param="prompt")
        elif total + to_generate > self.context_length:
            problem = ContextLengthExceeded(
                f"this model's maximum context length is {self.context_length} tokens; the "
                f"context would need {total + to_generate} ({total} in the prompt, "
                f"{to_generate} to generate)"
            )
        if problem is not None:
            if created:
                self.free(ctx.context_id)
            raise problem
        ctx.token_ids.extend(tokens)

    def free(self, context_id: str) -> None:
        ctx = self.get(context_id)
        if ctx.num_children:
            raise ContextBusy(
                f"context '{context_id}' still has {ctx.num_children} live child context(s)"
            )
        if ctx.busy:
            raise ContextBusy(f"context '{context_id}' has a request in flight")
        if ctx.parent is not None:
            ctx.parent.num_children -= 1
        del self._contexts[context_id]
