"""Drives a started `Generation` to an HTTP response, streaming (SSE) or not.

The OpenAI format of the response is delegated to an `Assembler` (chat or completions);
this module owns what both share: usage accounting, logprob token texts, time to first
token, metrics, response headers, error frames, and aborting on client disconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from litestar.types import Receive

from engine.errors import EngineError, RequestAborted
from engine.protocol import GenerateChunk
from gateway.errors import ApiError, from_engine
from gateway.metrics import Metrics
from gateway.protocol.responses import ENCODER, PromptTokensDetails, UsageInfo
from gateway.serving.generation import ClientGone, Generation
from gateway.serving.logprobs import Detokenize, TokenTexts, id_names
from gateway.transport import DONE, JsonResponse, SseResponse, error_frame, watch_disconnect


class Assembler(Protocol):
    """Turns engine chunks into one OpenAI response type."""

    def add(self, index: int, chunk: GenerateChunk, texts: dict[int, str] | None) -> None:
        """Non-streaming: accumulate a chunk."""

    def response(self, usage: UsageInfo) -> Any:
        """Non-streaming: the response body."""

    def stream_start(self) -> bytes:
        """Streaming: frames sent before the first token (may be empty)."""

    def stream_chunk(self, index: int, chunk: GenerateChunk, texts: dict[int, str] | None) -> bytes:
        """Streaming: the frames for one engine chunk."""

    def stream_usage(self, usage: UsageInfo) -> bytes:
        """Streaming: the final usage frame (stream_options.include_usage)."""


@dataclass(slots=True)
class Call:
    """One API request in flight."""

    route: str
    model: str
    request_id: str
    prompt_tokens: int
    choices_per_prompt: int
    include_usage: bool = False
    detokenize: Detokenize | None = None  # set when logprobs were asked for
    tokens_as_ids: bool = False  # logprob tokens named "token_id:<id>", not by their text
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0
    cached: dict[int, int] = field(default_factory=dict)  # prompt index -> cached tokens

    def headers(self, generation: Generation) -> dict[str, str]:
        return {
            "x-request-id": self.request_id,
            "x-parrot-engine": ",".join(generation.engine_ids()),
        }

    def count(self, index: int, chunk: GenerateChunk) -> None:
        if self.first_token_at is None and chunk.token_ids:
            self.first_token_at = time.perf_counter()
        if chunk.finish_reason is None:
            return
        if chunk.finish_reason in ("abort", "error"):
            raise RequestAborted(f"the engine ended the request ({chunk.finish_reason})")
        usage = chunk.usage
        self.completion_tokens += usage.completion_tokens if usage else len(chunk.token_ids)
        if usage is not None and usage.cached_tokens:
            prompt = index // self.choices_per_prompt
            self.cached[prompt] = max(self.cached.get(prompt, 0), usage.cached_tokens)

    def usage(self, generation: Generation) -> UsageInfo:
        cached = sum(self.cached.values()) + sum(job.cached_tokens for job in generation.jobs)
        cached = min(cached, self.prompt_tokens)
        return UsageInfo(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )

    def done(self, metrics: Metrics, usage: UsageInfo) -> None:
        now = time.perf_counter()
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        details = usage.prompt_tokens_details
        metrics.finished(
            self.route,
            self.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=details.cached_tokens if details else 0,
            ttft_s=ttft,
            latency_s=now - self.started,
        )


class Runner:
    def __init__(self, metrics: Metrics, token_texts: TokenTexts) -> None:
        self._metrics = metrics
        self._token_texts = token_texts

    async def _texts(self, call: Call, chunk: GenerateChunk) -> dict[int, str] | None:
        if chunk.logprobs is None or call.detokenize is None:
            return None
        if call.tokens_as_ids:
            return id_names(chunk.logprobs)
        return await self._token_texts.lookup(call.model, chunk.logprobs, call.detokenize)

    async def respond(
        self, call: Call, generation: Generation, assembler: Assembler, receive: Receive
    ) -> JsonResponse:
        """Non-streaming: collect every choice, then answer once."""
        if generation.num_choices > 1:
            generation.start()
        watcher = None
        try:
            async for index, chunk in generation.events():
                call.count(index, chunk)
                assembler.add(index, chunk, await self._texts(call, chunk))
                if watcher is None and chunk.finish_reason is None:
                    # A generation that takes a while: from now on a client that leaves
                    # aborts it (one that answers at once never pays for the watcher).
                    watcher = watch_disconnect(receive, generation.abort)
        except (ClientGone, asyncio.CancelledError):
            if not generation.aborted:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            self._metrics.failed(call.route, 499)
            return JsonResponse(b"", {}, 499)
        except EngineError as exc:
            raise from_engine(exc) from exc
        finally:
            if watcher is not None:
                watcher.cancel()
            await generation.close()
        usage = call.usage(generation)
        call.done(self._metrics, usage)
        body = ENCODER.encode(assembler.response(usage))
        return JsonResponse(body, call.headers(generation))

    async def stream(
        self, call: Call, generation: Generation, assembler: Assembler, receive: Receive
    ) -> SseResponse:
        """SSE. The first chunk is awaited before answering, so that a failure before any
        token still gets a proper HTTP status instead of a 200 with an error frame."""
        if generation.num_choices > 1:
            generation.start()
        events = generation.events()
        try:
            first = await anext(events, None)
            if first is not None:
                call.count(*first)
        except BaseException as exc:
            await generation.close()
            if isinstance(exc, EngineError):
                raise from_engine(exc) from exc
            raise
        # One choice that finished in its first chunk needs no disconnect watcher.
        more = generation.num_choices > 1 or (first is not None and first[1].finish_reason is None)

        async def frames() -> AsyncIterator[bytes]:
            watcher = watch_disconnect(receive, generation.abort) if more else None
            try:
                yield assembler.stream_start()
                if first is not None:
                    yield assembler.stream_chunk(*first, await self._texts(call, first[1]))
                async for index, chunk in events:
                    call.count(index, chunk)
                    yield assembler.stream_chunk(index, chunk, await self._texts(call, chunk))
                usage = call.usage(generation)
                if call.include_usage:
                    yield assembler.stream_usage(usage)
                call.done(self._metrics, usage)
            except (ClientGone, asyncio.CancelledError):
                if not generation.aborted:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                self._metrics.failed(call.route, 499)
                return
            except (EngineError, ApiError) as exc:
                error = from_engine(exc) if isinstance(exc, EngineError) else exc
                self._metrics.failed(call.route, error.status)
                yield error_frame(error)
            finally:
                if watcher is not None:
                    watcher.cancel()
                # Left early (client gone while a frame was being sent): close the engine
                # stream now rather than whenever the generator is garbage-collected.
                await events.aclose()  # type: ignore[attr-defined]
            yield DONE

        return SseResponse(
            frames(), generation.close, call.headers(generation), lambda: generation.aborted
        )
