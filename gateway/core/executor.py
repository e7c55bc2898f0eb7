"""`Executor`: runs one placed call on its engine and fills its output variables.

    stage 0 tokens ──fill (forking a cached prefix if any)──> generate output 0 ─┐
    stage 1 tokens ──fill into the same context──────────────> generate output 1 ─┤ ...
                                                              each resolves its variable

Stage k is everything between output k-1 and output k (text, inputs, literals), tokenized
piece by piece, so the tokens do not depend on whether a prefix was shared. An output
ends when its generation finishes; its variable wakes consumers at once, before this call
moves on to its next output.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from engine.errors import EngineError, EngineUnavailable, RequestAborted, error_from_wire
from engine.protocol import GenerateRequest, Scheduling
from gateway.core.config import CoreConfig
from gateway.core.contexts import ContextManager
from gateway.core.entries import Entry, prefix_key, session_prefix_key, sibling_run
from gateway.core.graph import Call, OutputSlot, Variable
from gateway.core.objectives import followed_by_latency
from gateway.core.template import Input, Output, Text
from gateway.core.tokens import TokenCache
from gateway.errors import ApiError, from_engine
from gateway.pool.members import Member

log = logging.getLogger(__name__)

Outcome = Literal["done", "retry"]
# (member id, seconds per generated token) of a latency-critical output
ObserveRate = Callable[[str, float], None]


class CallError(Exception):
    """A call failed; carries the client-facing error."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class Generated:
    text: str
    ids: list[int]  # every token the engine appended (a final stop token included)
    value_ids: list[int] | None  # ids whose text is exactly `text`, when known


class Executor:
    def __init__(
        self,
        config: CoreConfig,
        contexts: ContextManager,
        tokens: TokenCache,
        observe: ObserveRate,
    ) -> None:
        self._config = config
        self._contexts = contexts
        self._tokens = tokens
        self._observe = observe

    def scheduling(self, call: Call) -> Scheduling:
        if call.scheduling is not None:
            return call.scheduling
        return Scheduling(
            objective=call.objective,
            priority=call.priority,
            group_id=call.group_id,
            app_id=call.session.app_id,
        )

    async def _stages(
        self, call: Call, member: Member, mark: int = 0
    ) -> tuple[list[list[int]], int]:
        """Each output's prompt tokens, and how many of stage 0 the first `mark` segments
        make up."""
        engine, model = member.engine, call.model
        stages: list[list[int]] = [[]]
        marked = 0
        for index, segment in enumerate(call.segments):
            if index == mark:
                marked = len(stages[0])
            special = index == 0 and not call.chat  # a chat template wrote any BOS itself
            if isinstance(segment, Text):
                ids = await self._tokens.encode(engine, model, segment.text, special)
            elif isinstance(segment, Input):
                bound = call.inputs[segment.name]
                if isinstance(bound, Variable):
                    ids = bound.token_ids.get(model) if not special else None
                    if ids is None:
                        ids = await self._tokens.encode(engine, model, bound.value or "", special)
                else:
                    ids = await self._tokens.encode(engine, model, bound, special)
            else:
                assert isinstance(segment, Output)
                stages.append([])
                continue
            stages[-1] = stages[-1] + ids
        return stages[: len(call.outputs)], marked

    async def run(self, call: Call, member: Member) -> Outcome:
        """Run the call; raises CallError when it fails for good."""
        run = sibling_run(call) if self._shares(member) else None
        try:
            stages, run_tokens = await self._stages(call, member, len(run) if run else 0)
        except EngineUnavailable:
            return "retry"
        except EngineError as exc:
            raise CallError(from_engine(exc)) from exc
        session_prefix = None
        if run is not None:
            assert member.info is not None
            size = member.info.block_size
            key = session_prefix_key(call.model, call.session, call.chat, run)
            session_prefix = (key, stages[0][: max(run_tokens - 1, 0) // size * size])
        lease = await self._lease(call, member, stages[0], self.scheduling(call), session_prefix)
        context_id = call.context_id
        parent = lease.context_id if lease is not None else None
        tokens = list(stages[0])
        pending = stages[0][len(lease.token_ids) :] if lease is not None else stages[0]
        started = False  # the engine holds a context of ours
        last_stop: int | None = None
        completed = 0
        try:
            for k, slot in enumerate(call.outputs):
                if k:
                    pending = stages[k]
                    if last_stop is not None and pending[:1] == [last_stop]:
                        pending = pending[1:]  # e.g. a chat turn's end token, already there
                    tokens += pending
                scheduling = msgspec.structs.replace(
                    self.scheduling(call),  # a GET may have promoted the call
                    followup=followed_by_latency(call, k),
                )
                request = GenerateRequest(
                    request_id=f"{context_id}.{k}",
                    context_id=context_id,
                    parent_context_id=parent if k == 0 else None,
                    prompt_token_ids=pending,
                    sampling=slot.sampling,
                    scheduling=scheduling,
                )
                started = True
                generated = await self._generate(member, request, slot, call.objective)
                tokens += generated.ids
                stop_dropped = generated.value_ids is not None and len(generated.value_ids) < len(
                    generated.ids
                )
                last_stop = generated.ids[-1] if stop_dropped else None
                slot.variable.resolve(generated.text, call.model, generated.value_ids)
                completed += 1
        except EngineUnavailable as exc:
            if completed == 0 and not call.outputs[0].variable.parts:
                return "retry"
            raise CallError(from_engine(exc)) from exc
        except EngineError as exc:
            raise CallError(from_engine(exc)) from exc
        finally:
            await self._finish(
                call,
                member,
                context_id if started else None,
                tokens,
                lease,
                completed == len(call.outputs),
            )
        return "done"

    def _shares(self, member: Member) -> bool:
        info = member.info
        return self._config.share_prefixes and info is not None and info.supports_fork

    async def _lease(
        self,
        call: Call,
        member: Member,
        stage0: list[int],
        scheduling: Scheduling,
        session_prefix: tuple[bytes, list[int]] | None,
    ) -> Entry | None:
        if not self._shares(member):
            return None
        assert member.info is not None
        first = call.segments[0]
        key, prefix = None, []
        if isinstance(first, Text):
            key = prefix_key(call.model, call.session.cache_salt, first.text)
            call.session.prefix_keys.add(key)
            text_ids = await self._tokens.encode(
                member.engine, call.model, first.text, not call.chat
            )
            # Whole blocks only, and never the text's last token: forks then copy no partial
            # block, and the cut sits where tokenizing a longer prompt agrees with it (the
            # last token may merge with what follows, e.g. a trailing space).
            size = member.info.block_size
            prefix = text_ids[: (len(text_ids) - 1) // size * size]
        return await self._contexts.lease(
            member, key, prefix, call.session.session_id, stage0, scheduling, session_prefix
        )

    async def _generate(
        self, member: Member, request: GenerateRequest, slot: OutputSlot, objective: str
    ) -> Generated:
        variable = slot.variable
        ids: list[int] = []
        parts: list[str] = []
        finish = None
        last_text = ""
        first_at = last_at = 0.0
        chunks = member.engine.generate(request)
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                if chunk.error is not None:
                    raise error_from_wire(chunk.error.code, chunk.error.message, chunk.error.param)
                if chunk.finish_reason == "abort":
                    raise RequestAborted(f"the engine aborted request '{request.request_id}'")
                if chunk.token_ids:
                    last_at = time.perf_counter()
                    first_at = first_at or last_at
                ids.extend(chunk.token_ids)
                if chunk.text:
                    parts.append(chunk.text)
                    variable.emit(chunk.text)
                last_text = chunk.text
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                    break
        if objective == "latency" and len(ids) > 1:
            self._observe(member.member_id, (last_at - first_at) / (len(ids) - 1))
        value_ids: list[int] | None = None
        if finish == "length":
            value_ids = ids
        elif finish == "stop" and not request.sampling.stop and not last_text and ids:
            value_ids = ids[:-1]  # ended by a stop token, which has no text
        return Generated("".join(parts), ids, value_ids)

    async def _finish(
        self,
        call: Call,
        member: Member,
        context_id: str | None,
        tokens: list[int],
        lease: Entry | None,
        complete: bool,
    ) -> None:
        retain = (
            complete
            and context_id is not None
            and self._config.retain_call_contexts
            and not call.session.closed
        )
        if retain:
            assert context_id is not None
            self._contexts.retain(member, call.session.session_id, context_id, tokens, lease)
        elif context_id is not None:
            try:
                await member.engine.free(context_id)
            except EngineError as exc:
                log.debug("could not free %s: %s", context_id, exc)
        if lease is not None:
            self._contexts.release(lease)
