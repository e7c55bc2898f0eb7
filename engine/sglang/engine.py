"""`SGLangEngine`: an `EngineClient` over a launched SGLang server's native `/generate` API.

Contexts are token histories (engine/openai/history.py) replayed as `input_ids`; SGLang's
radix cache makes the replayed prefix a cache hit. A fill is sent as a prefill-only request
(`max_new_tokens=0`) tagged to pin its prefix (with the Parrot plugin loaded in SGLang), and
freeing the context sends a one-token prefill-only request tagged to unpin it. Objectives
travel in the tag (the plugin orders by them) and, when configured, in SGLang's `priority`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from engine.errors import EngineError, EngineUnavailable, RequestAborted
from engine.openai.errors import stream_error, upstream_error
from engine.openai.history import History, HistoryTable
from engine.openai.replay import ReplayFront, send
from engine.openai.sse import data_events
from engine.openai.tokenizer import TextTokenizer, UpstreamTokenizer
from engine.openai.wire import ENCODER, MODELS
from engine.protocol import (
    EngineInfo,
    EngineStats,
    FillRequest,
    FillResult,
    GenerateChunk,
    GenerateRequest,
    SamplingParams,
    Scheduling,
    Usage,
)
from engine.sglang.config import SGLangConfig
from engine.sglang.requests import (
    OUTPUT,
    Deltas,
    abort_error,
    finish_reason,
    generate_body,
    rid_of,
    sampling_params,
    tag_for,
)

BLOCK_SIZE = 16  # nominal (SGLang pages by 1 token by default); used for prefix hashing
_PREFILL_ONLY = SamplingParams(max_tokens=1)


class SGLangEngine(ReplayFront):
    def __init__(self, config: SGLangConfig, tokenizer: TextTokenizer | None = None) -> None:
        self.config = config
        self.url = config.url.rstrip("/")
        self._where = f"sglang server {self.url}"
        self._local_tokenizer = tokenizer
        self._tokenizer: TextTokenizer | None = None
        self._info: EngineInfo | None = None
        self._histories: HistoryTable | None = None
        self._client = httpx.AsyncClient(
            headers={"content-type": "application/json"},
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._pinned: set[str] = set()
        self._inflight: dict[str, httpx.Response] = {}
        self._aborted: set[str] = set()
        self._stats = EngineStats(engine_id=config.engine_id or f"sglang@{self.url}")

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise self._unreached()
        return self._info

    async def start(self) -> None:
        if self._info is not None:
            return
        response = await self._call("GET", "/v1/models", None)
        cards = MODELS.decode(response.content).data
        card = next((c for c in cards if self.config.model in (None, c.id)), None)
        if card is None:
            raise EngineUnavailable(f"sglang server {self.url} does not serve the model")
        context_length = self.config.context_length or card.max_model_len or 0
        if context_length < 1:
            raise EngineUnavailable(f"sglang server {self.url} reports no context length")
        if self._local_tokenizer is not None and self.config.tokenizer != "upstream":
            self._tokenizer = self._local_tokenizer
        else:
            self._tokenizer = UpstreamTokenizer(self._client, self.url, card.id)
        self._histories = HistoryTable(context_length)
        vocab = self._tokenizer.vocab_size or 2**31 - 1
        self._info = EngineInfo(
            engine_id=self._stats.engine_id,
            backend="sglang",
            model=card.id,
            context_length=context_length,
            vocab_size=vocab,
            block_size=BLOCK_SIZE,
            supports_fork=False,  # forks are replays; SGLang's radix cache does the sharing
        )

    async def close(self) -> None:
        for response in list(self._inflight.values()):
            await response.aclose()
        await self._client.aclose()

    async def health(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            response = await self._client.get(
                f"{self.url}/health", timeout=self.config.health_timeout_s
            )
            return response.status_code == 200
        return False

    async def _call(self, method: str, path: str, body: Any) -> httpx.Response:
        content = None if body is None else ENCODER.encode(body)
        return await send(self._client, method, f"{self.url}{path}", "sglang server", content)

    # ---- contexts ----------------------------------------------------------------------

    async def _prefill(self, rid: str, tokens: list[int], scheduling: Scheduling, **tag: str):
        params = sampling_params(_PREFILL_ONLY) | {"max_new_tokens": 0}
        body = generate_body(
            self.config, rid, tokens, params, scheduling, tag_for(scheduling, **tag), False
        )
        return OUTPUT.decode((await self._call("POST", "/generate", body)).content)

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
        response = self._inflight.get(request_id)
        if response is None:
            return
        self._aborted.add(request_id)
        with contextlib.suppress(EngineError):
            await self._call("POST", "/abort_request", {"rid": rid_of(request_id)})
        await response.aclose()

    async def stats(self) -> EngineStats:
        s = self._stats
        s.num_running = len(self._inflight)
        s.num_contexts = len(self._histories or ())
        return EngineStats(**{f: getattr(s, f) for f in s.__struct_fields__})

    # ---- generate ----------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        request.sampling.validate(self.info.vocab_size)
        params = sampling_params(request.sampling)
        tokens = await self._tokens(request.prompt_token_ids, request.prompt_text)
        ctx, created = self.histories.open(request.context_id, request.parent_context_id)
        self.histories.extend(ctx, tokens, request.sampling.max_tokens, created)
        ctx.busy = True
        try:
            async for chunk in self._stream(request, ctx, params):
                yield chunk
        finally:
            ctx.busy = False
            self._aborted.discard(request.request_id)
            if request.free_on_finish:
                with contextlib.suppress(EngineError):
                    await self.free(ctx.context_id)

    async def _stream(
        self, request: GenerateRequest, ctx: History, params: dict[str, Any]
    ) -> AsyncIterator[GenerateChunk]:
        url = f"{self.url}/generate"
        tag = tag_for(request.scheduling)
        body = generate_body(
            self.config,
            rid_of(request.request_id),
            ctx.token_ids,
            params,
            request.scheduling,
            tag,
            True,
        )
        prompt_tokens = len(ctx.token_ids)
        deltas = Deltas()
        generated: list[int] = []
        try:
            async with self._client.stream("POST", url, content=ENCODER.encode(body)) as response:
                if response.status_code >= 400:
                    raise upstream_error(url, response.status_code, await response.aread())
                self._inflight[request.request_id] = response
                async for payload in data_events(response.aiter_lines()):
                    try:
                        out = OUTPUT.decode(payload)
                    except msgspec.MsgspecError as exc:
                        raise EngineUnavailable(f"sglang {url} sent a malformed event") from exc
                    if out.error is not None:
                        raise stream_error(url, out.error)
                    ids, text = deltas.step(out)
                    generated.extend(ids)
                    finish = finish_reason(out.meta_info.finish_reason)
                    if finish is None and (ids or text):
                        yield GenerateChunk(request_id=request.request_id, token_ids=ids, text=text)
                    elif finish is not None:
                        ctx.token_ids.extend(generated)
                        meta = out.meta_info
                        usage = Usage(
                            meta.prompt_tokens or prompt_tokens,
                            meta.completion_tokens,
                            meta.cached_tokens,
                        )
                        self._account(usage)
                        if finish == "abort":
                            aborted = request.request_id in self._aborted
                            raise abort_error(url, request.request_id, aborted, meta.finish_reason)
                        yield GenerateChunk(
                            request_id=request.request_id,
                            token_ids=ids,
                            text=text,
                            finish_reason=finish,
                            usage=usage,
                        )
                        return
        except (httpx.TransportError, httpx.StreamError) as exc:
            if request.request_id in self._aborted:
                raise RequestAborted(f"request '{request.request_id}' was aborted") from exc
            raise EngineUnavailable(f"sglang {url} failed mid-stream: {exc}") from exc
        finally:
            self._inflight.pop(request.request_id, None)
        if request.request_id in self._aborted:
            raise RequestAborted(f"request '{request.request_id}' was aborted")
        raise EngineUnavailable(f"sglang {url} ended the stream without finishing")

    def _account(self, usage: Usage) -> None:
        self._stats.prompt_tokens += usage.prompt_tokens
        self._stats.generated_tokens += usage.completion_tokens
        self._stats.prefix_query_tokens += usage.prompt_tokens
        self._stats.prefix_hit_tokens += usage.cached_tokens
