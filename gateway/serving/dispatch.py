"""`Dispatcher`: from a model name and prompts to a `Generation` on routed engines.

It resolves the model (404 when nobody serves it, 503 when its engines are all down),
tokenizes through the prompt cache, checks the context window, routes each prompt, and for
n > 1 fills the prompt once into a parent context that the n choices fork:

    parent  = prompt[:-1]                 (filled once; its KV is shared)
    child j = parent + prompt[-1:] + ...  (each samples its own completion)
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, TypeVar

import msgspec

from engine.errors import EngineUnavailable
from engine.protocol import (
    ChatMessage,
    EngineInfo,
    FillRequest,
    GenerateRequest,
    SamplingParams,
    Scheduling,
)
from gateway.errors import bad_request, context_length_exceeded, model_not_found, no_engine
from gateway.pool.members import EnginePool, Member
from gateway.pool.router import Router
from gateway.serving.generation import MAX_REROUTES, Generation, Job, Reroute
from gateway.serving.prompts import Prompt, PromptCache

T = TypeVar("T")


def new_request_id() -> str:
    return secrets.token_hex(12)


class SessionLease(NamedTuple):
    """A cached context of a Parrot session that a request joining it forks."""

    member: Member
    context_id: str
    num_tokens: int  # the leading prompt tokens it already holds
    release: Callable[[], None]


# (app id "tenant/session", model, prompt token ids) -> a context to fork, or None; raises a
# 404 ApiError when the session does not exist for that tenant. Set by the Parrot core.
JoinSession = Callable[[str, str, list[int]], Awaitable[SessionLease | None]]


class Dispatcher:
    def __init__(
        self, pool: EnginePool, router: Router, prompts: PromptCache, retry_after_s: int = 1
    ) -> None:
        self._pool = pool
        self._router = router
        self._prompts = prompts
        self._retry_after_s = retry_after_s
        self.join: JoinSession | None = None

    def resolve(self, model: str) -> EngineInfo:
        """The model's engine info; 404 if no engine ever served it, 503 if none is up."""
        members = self._pool.serving(model)
        if members:
            return members[0].info  # type: ignore[return-value]
        if model in self._pool.models():
            raise no_engine(model, self._retry_after_s)
        raise model_not_found(model)

    async def _on_any(self, model: str, call: Callable[[Member], Awaitable[T]]) -> T:
        """Run a model-level call (tokenize, render) on a healthy member, failing over."""
        for _ in range(MAX_REROUTES + 1):
            members = self._pool.serving(model)
            if not members:
                break
            # In-process engines answer without a network hop.
            member = min(members, key=lambda m: m.url is not None)
            try:
                return await call(member)
            except EngineUnavailable as exc:
                self._pool.mark_failed(member, str(exc))
        raise no_engine(model, self._retry_after_s)

    async def chat_prompt(self, model: str, messages: Sequence[ChatMessage]) -> Prompt:
        return await self._on_any(model, lambda m: self._prompts.chat(m.engine, model, messages))

    async def text_prompt(self, model: str, text: str) -> Prompt:
        return await self._on_any(model, lambda m: self._prompts.text(m.engine, model, text))

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        return await self._on_any(model, lambda m: m.engine.detokenize(token_ids))

    @staticmethod
    def token_prompt(info: EngineInfo, token_ids: list[int], param: str = "prompt") -> Prompt:
        if any(not 0 <= t < info.vocab_size for t in token_ids):
            raise bad_request(f"'{param}' has token ids outside [0, {info.vocab_size}).", param)
        return Prompt(list(token_ids))

    @staticmethod
    def max_tokens(info: EngineInfo, prompt: Prompt, requested: int | None, param: str) -> int:
        """The completion budget; 400 context_length_exceeded when prompt + it don't fit."""
        if not prompt.token_ids:
            raise bad_request("The prompt is empty.", param)
        room = info.context_length - len(prompt)
        if requested is None:
            if room < 1:
                raise context_length_exceeded(info.context_length, len(prompt), 1, param)
            return room
        if requested > room:
            raise context_length_exceeded(info.context_length, len(prompt), requested, param)
        return requested

    async def dispatch(
        self,
        model: str,
        info: EngineInfo,
        prompts: Sequence[tuple[Prompt, SamplingParams]],
        n: int,
        scheduling: Scheduling,
        request_id: str,
    ) -> Generation:
        """Route every prompt and fork where n > 1; the caller starts (or inlines) it."""
        jobs: list[Job] = []
        try:
            for i, (prompt, sampling) in enumerate(prompts):
                jobs.append(
                    await self._job(
                        model,
                        info,
                        prompt,
                        sampling,
                        n,
                        scheduling,
                        f"{request_id}-{i}",
                        first_index=i * n,
                    )
                )
        except BaseException:
            await Generation(jobs).close()  # free the parents already filled
            raise
        return Generation(jobs)

    async def _job(
        self,
        model: str,
        info: EngineInfo,
        prompt: Prompt,
        sampling: SamplingParams,
        n: int,
        scheduling: Scheduling,
        base_id: str,
        first_index: int,
    ) -> Job:
        hashes = prompt.block_hashes(info.block_size, self._router.max_blocks)
        tried: set[str] = set()
        member, _ = await self._router.pick(model, hashes)

        async def reroute(failed: Member) -> Member:
            self._pool.mark_failed(failed, "unreachable during a request")
            tried.add(failed.member_id)
            return (await self._router.pick(model, hashes, exclude=tried))[0]

        def request(j: int, parent: str | None, token_ids: list[int]) -> GenerateRequest:
            seeded = sampling
            if sampling.seed is not None and j:
                seeded = msgspec.structs.replace(sampling, seed=(sampling.seed + j) % 2**63)
            return GenerateRequest(
                request_id=f"{base_id}-{j}",
                context_id=f"{base_id}-{j}",
                parent_context_id=parent,
                prompt_token_ids=token_ids,
                sampling=seeded,
                scheduling=scheduling,
                free_on_finish=True,
            )

        if scheduling.app_id is not None and self.join is not None:
            lease = await self.join(scheduling.app_id, model, prompt.token_ids)
            if lease is not None and n == 1:
                tail = prompt.token_ids[lease.num_tokens :]
                job_request = request(0, lease.context_id, tail)
                return Job(
                    lease.member,
                    [(first_index, job_request)],
                    release=lease.release,
                    cached_tokens=lease.num_tokens,
                )
            if lease is not None:
                lease.release()  # n > 1 forks its own parent; the engine's cache still helps
        if n == 1 or len(prompt) < 2 or not info.supports_fork:
            requests = [(first_index + j, request(j, None, prompt.token_ids)) for j in range(n)]
            return Job(member, requests, reroute=reroute)
        parent = f"{base_id}-p"
        fill = FillRequest(
            context_id=parent, token_ids=prompt.token_ids[:-1], scheduling=scheduling
        )
        for attempt in range(MAX_REROUTES + 1):
            try:
                result = await member.engine.fill(fill)
                break
            except EngineUnavailable:
                if attempt == MAX_REROUTES:
                    raise
                member = await reroute(member)
        last = prompt.token_ids[-1:]
        requests = [(first_index + j, request(j, parent, last)) for j in range(n)]
        return Job(member, requests, parent_context_id=parent, cached_tokens=result.cached_tokens)


__all__ = ["Dispatcher", "Reroute", "new_request_id"]
