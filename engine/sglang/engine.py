"""`SGLangEngine`: an `EngineClient` over SGLang's native generate API, by HTTP or in process.

SGLang is reached through a `Transport`: a launched server over HTTP, or an `sglang.Engine`
in this process.

Contexts are token histories (engine/openai/history.py) replayed as `input_ids`; SGLang's
radix cache makes the replayed prefix a cache hit. A fill is sent as a prefill-only request
(`max_new_tokens=0`) tagged to pin its prefix (with the Parrot plugin loaded in SGLang), and
freeing the context sends a one-token prefill-only request tagged to unpin it. Objectives
travel in the tag (the plugin orders by them) and, when configured, in SGLang's `priority`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from engine.errors import EngineError, EngineUnavailable, InvalidRequest, RequestAborted
from engine.openai.history import History, HistoryTable
from engine.openai.replay import ReplayFront
from engine.openai.tokenizer import TextTokenizer
from engine.protocol import (
    EngineInfo,
    EngineStats,
    FillRequest,
    FillResult,
    GenerateChunk,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
    SamplingParams,
    Scheduling,
    Usage,
)
from engine.sglang.config import SGLangConfig
from engine.sglang.outputs import Deltas, Output, abort_error, finish_reason
from engine.sglang.requests import generate_body, rid_of, sampling_params, tag_for
from engine.sglang.transport import HttpTransport, Transport

BLOCK_SIZE = 16  # nominal (SGLang pages by 1 token by default); used for prefix hashing
_PREFILL_ONLY = SamplingParams(max_tokens=1)


def transport_for(config: SGLangConfig) -> Transport:
    if config.in_process:
        from engine.sglang.inprocess import InProcessTransport

        return InProcessTransport(config)
    return HttpTransport(config)


class SGLangEngine(ReplayFront):
    def __init__(
        self,
        config: SGLangConfig,
        tokenizer: TextTokenizer | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.transport = transport or transport_for(config)
        self._where = self.transport.where
        self._local_tokenizer = tokenizer
        self._tokenizer: TextTokenizer | None = None
        self._info: EngineInfo | None = None
        self._histories: HistoryTable | None = None
        self._pinned: set[str] = set()
        self._inflight: set[str] = set()
        self._aborted: set[str] = set()
        self._stats = EngineStats(engine_id=config.engine_id or f"sglang@{config.location}")

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise self._unreached()
        return self._info

    async def start(self) -> None:
        if self._info is not None:
            return
        facts = await self.transport.start()
        context_length = self.config.context_length or facts.context_length or 0
        if context_length < 1:
            raise EngineUnavailable(f"{self._where} reports no context length")
        if self._local_tokenizer is not None and self.config.tokenizer != "upstream":
            self._tokenizer = self._local_tokenizer
        elif facts.tokenizer is not None:
            self._tokenizer = facts.tokenizer
        else:
            raise EngineUnavailable(
                f"{self._where} has no tokenizer (skip_tokenizer_init); give the engine a "
                "local tokenizer of the same model (--tokenizer PATH)"
            )
        self._histories = HistoryTable(context_length)
        vocab = self._tokenizer.vocab_size or 2**31 - 1
        self._info = EngineInfo(
            engine_id=self._stats.engine_id,
            backend="sglang",
            model=facts.model,
            context_length=context_length,
            vocab_size=vocab,
            block_size=BLOCK_SIZE,
            supports_fork=False,  # forks are replays; SGLang's radix cache does the sharing
        )

    async def close(self) -> None:
        await self.transport.close()

    async def health(self) -> bool:
        return await self.transport.health()

    # ---- contexts ----------------------------------------------------------------------

    async def _prefill(
        self, rid: str, tokens: list[int], scheduling: Scheduling, **tag: str
    ) -> Output:
        params = sampling_params(_PREFILL_ONLY) | {"max_new_tokens": 0}
        body = generate_body(
            self.config, rid, tokens, params, scheduling, tag_for(scheduling, **tag), False
        )
        return await self.transport.generate(body)

    async def fill(self, request: FillRequest) -> FillResult:
        tokens = await self._tokens(request.token_ids, request.text)
        ctx, created = self.histories.open(request.context_id, request.parent_context_id)
        self.histories.extend(ctx, tokens, 0, created)
        self._stats.prompt_tokens += len(tokens)
        if not self.config.prefill_on_fill or not ctx.token_ids:
            return FillResult(ctx.context_id, len(ctx.token_ids), 0)
        ctx.busy = True
        try:
            rid = rid_of(f"fill:{ctx.context_id}")
            out = await self._prefill(rid, ctx.token_ids, request.scheduling, pin=ctx.context_id)
        finally:
            ctx.busy = False
        self._pinned.add(ctx.context_id)
        cached = out.meta_info.cached_tokens
        self._stats.prefix_query_tokens += len(ctx.token_ids)
        self._stats.prefix_hit_tokens += cached
        return FillResult(ctx.context_id, len(ctx.token_ids), cached)

    async def free(self, context_id: str) -> None:
        ctx = self.histories.get(context_id)
        first = ctx.token_ids[:1]
        self.histories.free(context_id)
        if context_id in self._pinned and first:
            self._pinned.discard(context_id)
            await self._prefill(rid_of(f"free:{context_id}"), first, Scheduling(), unpin=context_id)

    async def abort(self, request_id: str) -> None:
        if request_id not in self._inflight:
            return
        self._aborted.add(request_id)
        await self.transport.abort(rid_of(request_id))

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        # The plugin ranks a request by the tag it arrived with; SGLang offers no call that
        # changes a queued request's tag, so a promotion reaches only later requests.
        return Rescheduled(False)

    async def stats(self) -> EngineStats:
        s = self._stats
        s.num_running = len(self._inflight)
        s.num_contexts = len(self._histories or ())
        return EngineStats(**{f: getattr(s, f) for f in s.__struct_fields__})

    # ---- generate ----------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        request.sampling.validate(self.info.vocab_size)
        tokens = await self._tokens(request.prompt_token_ids, request.prompt_text)
        ctx, created = self.histories.open(request.context_id, request.parent_context_id)
        self.histories.extend(ctx, tokens, request.sampling.max_tokens, created)
        ctx.busy = True
        self._inflight.add(request.request_id)
        try:
            # Closed at once when the caller stops early: that is what stops SGLang's request.
            async with contextlib.aclosing(self._stream(request, ctx)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except EngineUnavailable as exc:
            if request.request_id in self._aborted:  # our abort cut the stream
                raise RequestAborted(f"request '{request.request_id}' was aborted") from exc
            raise
        finally:
            ctx.busy = False
            self._inflight.discard(request.request_id)
            self._aborted.discard(request.request_id)
            if request.free_on_finish:
                with contextlib.suppress(EngineError):
                    await self.free(ctx.context_id)

    async def _stream(self, request: GenerateRequest, ctx: History) -> AsyncIterator[GenerateChunk]:
        rid, k = request.request_id, request.sampling.logprobs
        body = generate_body(
            self.config,
            rid_of(rid),
            ctx.token_ids,
            sampling_params(request.sampling),
            request.scheduling,
            tag_for(request.scheduling),
            True,
            k,
        )
        prompt_tokens = len(ctx.token_ids)
        deltas = Deltas()
        generated: list[int] = []
        async with contextlib.aclosing(self.transport.stream(body)) as outputs:
            async for out in outputs:
                ids, text, logprobs = deltas.step(out)
                if k is not None and ids and logprobs is None:
                    raise InvalidRequest(f"{self._where} does not report logprobs", "logprobs")
                generated.extend(ids)
                finish = finish_reason(out.meta_info.finish_reason)
                if finish is None:
                    if ids or text:
                        yield GenerateChunk(
                            request_id=rid, token_ids=ids, text=text, logprobs=logprobs
                        )
                    continue
                ctx.token_ids.extend(generated)
                meta = out.meta_info
                usage = Usage(
                    meta.prompt_tokens or prompt_tokens, meta.completion_tokens, meta.cached_tokens
                )
                self._account(usage)
                if finish == "abort":
                    aborted = rid in self._aborted
                    raise abort_error(self._where, rid, aborted, meta.finish_reason)
                yield GenerateChunk(
                    request_id=rid,
                    token_ids=ids,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=finish,
                    usage=usage,
                )
                return
        if rid in self._aborted:
            raise RequestAborted(f"request '{rid}' was aborted")
        raise EngineUnavailable(f"{self._where} ended the stream without finishing")

    def _account(self, usage: Usage) -> None:
        self._stats.prompt_tokens += usage.prompt_tokens
        self._stats.generated_tokens += usage.completion_tokens
        self._stats.prefix_query_tokens += usage.prompt_tokens
        self._stats.prefix_hit_tokens += usage.cached_tokens
