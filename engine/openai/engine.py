"""`OpenAIEngine`: an `EngineClient` over any OpenAI-compatible server's `/v1/completions`.

The upstream holds no context between requests, so contexts are token histories kept here
(`HistoryTable`) and each generate replays the whole context as a token-id prompt; the
upstream's prefix cache turns the replayed prefix into cache hits. Forks are copies
(`supports_fork=False` tells the gateway not to count on shared KV). Streaming passes
through; the sampled ids come from the upstream where it reports them (vLLM's
`return_token_ids`, or logprobs named by id), otherwise from tokenizing each text delta.
Logprobs are asked for by id where the upstream allows it (`logprobs.py`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import msgspec

from engine.errors import EngineError, EngineUnavailable, InvalidRequest, RequestAborted
from engine.openai.config import UpstreamConfig
from engine.openai.errors import decode_event, upstream_error
from engine.openai.history import History, HistoryTable
from engine.openai.logprobs import TokenNames
from engine.openai.replay import ReplayFront, send
from engine.openai.requests import completion_body
from engine.openai.sse import data_events
from engine.openai.tokenizer import TextTokenizer, UpstreamTokenizer
from engine.openai.wire import ENCODER, EVENT, MODELS, StreamChoice
from engine.protocol import (
    EngineInfo,
    EngineStats,
    FillRequest,
    FillResult,
    FinishReason,
    GenerateChunk,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
    Usage,
)

log = logging.getLogger(__name__)

NOMINAL_BLOCK_SIZE = 16  # the upstream's real paging is unknown; used for prefix hashing only
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


class OpenAIEngine(ReplayFront):
    def __init__(self, config: UpstreamConfig, tokenizer: TextTokenizer | None = None) -> None:
        self.config = config
        self._where = f"upstream {config.base_url}"
        self._local_tokenizer = tokenizer
        self._tokenizer: TextTokenizer | None = None
        self._token_names: TokenNames | None = None
        self._info: EngineInfo | None = None
        self._histories: HistoryTable | None = None
        headers = {"content-type": "application/json"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._inflight: dict[str, httpx.Response] = {}
        self._aborted: set[str] = set()
        self._stats = EngineStats(engine_id=self._engine_id)

    @property
    def _engine_id(self) -> str:
        return self.config.engine_id or f"openai@{self.config.base_url.rstrip('/')}"

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise self._unreached()
        return self._info

    async def start(self) -> None:
        if self._info is not None:
            return
        cfg = self.config
        url = f"{cfg.base_url.rstrip('/')}/models"
        response = await send(self._client, "GET", url, "upstream")
        cards = MODELS.decode(response.content).data
        card = next((c for c in cards if cfg.model in (None, c.id)), None)
        if card is None:
            served = ", ".join(c.id for c in cards) or "none"
            raise EngineUnavailable(f"upstream {url} does not serve '{cfg.model}' ({served})")
        context_length = cfg.context_length or card.max_model_len
        if context_length is None:
            raise EngineUnavailable(
                f"upstream {url} does not report its context length; configure context_length"
            )
        self._tokenizer = await self._pick_tokenizer(card.id)
        self._token_names = TokenNames(self._tokenizer)
        vocab = cfg.vocab_size or self._tokenizer.vocab_size or 2**31 - 1
        self._histories = HistoryTable(context_length)
        self._info = EngineInfo(
            engine_id=self._engine_id,
            backend="openai",
            model=card.id,
            context_length=context_length,
            vocab_size=vocab,
            block_size=NOMINAL_BLOCK_SIZE,
            supports_fork=False,
        )

    @property
    def _names(self) -> TokenNames:
        if self._token_names is None:
            raise self._unreached()
        return self._token_names

    async def _pick_tokenizer(self, model: str) -> TextTokenizer:
        mode = self.config.tokenizer
        if mode not in ("auto", "local", "upstream"):
            raise InvalidRequest(f"unknown tokenizer mode '{mode}'", param="tokenizer")
        if self._local_tokenizer is not None and mode != "upstream":
            return self._local_tokenizer
        if mode == "local":
            raise EngineUnavailable("tokenizer mode 'local' needs a local tokenizer")
        upstream = UpstreamTokenizer(self._client, self.config.root_url, model)
        if not await upstream.probe():
            raise EngineUnavailable(
                f"upstream {self.config.root_url} has no /tokenize endpoint; give the engine "
                "a local tokenizer of the same model (--tokenizer PATH)"
            )
        return upstream

    async def close(self) -> None:
        for response in list(self._inflight.values()):
            await response.aclose()
        await self._client.aclose()

    async def health(self) -> bool:
        url = f"{self.config.base_url.rstrip('/')}/models"
        with contextlib.suppress(httpx.HTTPError):
            response = await self._client.get(url, timeout=self.config.health_timeout_s)
            return response.status_code == 200
        return False

    # ---- contexts ----------------------------------------------------------------------

    async def fill(self, request: FillRequest) -> FillResult:
        """Bookkeeping only: the upstream sees the tokens when a generate replays them."""
        tokens = await self._tokens(request.token_ids, request.text)
        ctx, created = self.histories.open(request.context_id, request.parent_context_id)
        self.histories.extend(ctx, tokens, 0, created)
        self._stats.prompt_tokens += len(tokens)
        return FillResult(request.context_id, len(ctx.token_ids), 0)

    async def free(self, context_id: str) -> None:
        self.histories.free(context_id)

    async def abort(self, request_id: str) -> None:
        response = self._inflight.get(request_id)
        if response is not None:
            self._aborted.add(request_id)
            await response.aclose()  # the upstream aborts on disconnect

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        return Rescheduled(False)  # the OpenAI API has no way to re-rank a request

    async def stats(self) -> EngineStats:
        s = self._stats
        s.num_running = len(self._inflight)
        s.num_contexts = len(self._histories or ())
        return EngineStats(**{f: getattr(s, f) for f in s.__struct_fields__})

    # ---- generate ----------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        info = self.info
        request.sampling.validate(info.vocab_size)
        tokens = await self._tokens(request.prompt_token_ids, request.prompt_text)
        ctx, created = self.histories.open(request.context_id, request.parent_context_id)
        self.histories.extend(ctx, tokens, request.sampling.max_tokens, created)
        ctx.busy = True
        try:
            body = completion_body(
                self.config, info.model, ctx.token_ids, request.sampling, request.scheduling
            )
            stream = self._stream(request.request_id, ctx, body, request.sampling.logprobs)
            async for chunk in stream:
                yield chunk
        finally:
            ctx.busy = False
            self._aborted.discard(request.request_id)
            if request.free_on_finish:
                with contextlib.suppress(EngineError):
                    self.histories.free(ctx.context_id)

    async def _chunk(
        self, request_id: str, choice: StreamChoice, k: int | None
    ) -> GenerateChunk | None:
        """The engine chunk of one choice event (None when it carries nothing). Its ids are
        the upstream's where reported, else those the logprobs name, else the text's."""
        logprobs = None
        if k is not None and choice.logprobs is not None:
            logprobs = await self._names.logprobs(choice.logprobs, k, choice.token_ids)
        elif k is not None and (choice.text or choice.token_ids):
            raise InvalidRequest(f"{self._where} does not report logprobs", param="logprobs")
        ids = choice.token_ids
        if ids is None and logprobs is not None:
            ids = [lp.token_id for lp in logprobs]
        if ids is None:
            ids = await self.tokenizer.encode(choice.text) if choice.text else []
        if not (ids or choice.text or logprobs):
            return None
        return GenerateChunk(
            request_id=request_id, token_ids=ids, text=choice.text, logprobs=logprobs or None
        )

    async def _stream(
        self, request_id: str, ctx: History, body: dict, k: int | None
    ) -> AsyncIterator[GenerateChunk]:
        url = f"{self.config.base_url.rstrip('/')}/completions"
        prompt_tokens = len(ctx.token_ids)
        generated: list[int] = []
        finish: FinishReason | None = None
        usage = None
        # One chunk is held back so that the last one can carry the finish reason and the
        # usage, which arrive in later events: consumers treat an empty final chunk as a
        # stop token with no text.
        held: GenerateChunk | None = None
        try:
            async with self._client.stream("POST", url, content=ENCODER.encode(body)) as response:
                if response.status_code >= 400:
                    raise upstream_error(url, response.status_code, await response.aread())
                self._inflight[request_id] = response
                async for payload in data_events(response.aiter_lines()):
                    event = decode_event(EVENT, payload, "upstream", url)
                    usage = event.usage or usage
                    for choice in event.choices:
                        if choice.finish_reason is not None:
                            finish = _FINISH.get(choice.finish_reason, "stop")
                        chunk = await self._chunk(request_id, choice, k)
                        if chunk is not None:
                            generated.extend(chunk.token_ids)
                            if held is not None:
                                yield held
                            held = chunk
        except (httpx.TransportError, httpx.StreamError) as exc:
            if request_id in self._aborted:
                raise RequestAborted(f"request '{request_id}' was aborted") from exc
            raise EngineUnavailable(f"upstream {url} failed mid-stream: {exc}") from exc
        finally:
            self._inflight.pop(request_id, None)
        if request_id in self._aborted:
            raise RequestAborted(f"request '{request_id}' was aborted")
        if finish is None:
            raise EngineUnavailable(f"upstream {url} ended the stream without finishing")
        ctx.token_ids.extend(generated)
        cached = 0
        if usage is not None and usage.prompt_tokens_details is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        completion = usage.completion_tokens if usage is not None else len(generated)
        self._stats.prompt_tokens += prompt_tokens
        self._stats.generated_tokens += completion
        self._stats.prefix_query_tokens += prompt_tokens
        self._stats.prefix_hit_tokens += cached
        last = held or GenerateChunk(request_id=request_id)
        yield msgspec.structs.replace(
            last, finish_reason=finish, usage=Usage(prompt_tokens, completion, cached)
        )
