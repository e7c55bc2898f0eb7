"""`SimEngine`: the simulator behind the `EngineClient` protocol, paced on the event loop.

Each step of `SimCore` sleeps its simulated duration divided by `speedup` (1.0: real time;
larger: faster than real time; `math.inf`: no sleeping at all), then delivers that step's
tokens. It lets a real gateway drive tens of model-free engines (`parrot engine --backend
sim`). Cluster studies that need thousands of applications use the virtual clock of
engine/sim/cluster.py instead, which needs no event loop at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

from engine.errors import EngineError, EngineUnavailable, InvalidRequest
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
from engine.sim.core import SimCore
from engine.sim.profile import CostProfile


class SimEngine:
    def __init__(self, profile: CostProfile, engine_id: str = "sim-0", speedup: float = 1.0):
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self.core = SimCore(profile, engine_id)
        self.speedup = speedup
        self._info = EngineInfo(
            engine_id=engine_id,
            backend="sim",
            model=profile.model,
            context_length=profile.context_length,
            vocab_size=self.core.tokenizer.vocab_size,
            block_size=profile.block_size,
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.simulated_s = 0.0

    @property
    def info(self) -> EngineInfo:
        return self._info

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def health(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            if not len(self.core):
                self._wake.clear()
                await self._wake.wait()
            result = self.core.step()
            self.simulated_s += result.duration_s
            delay = 0.0 if math.isinf(self.speedup) else result.duration_s / self.speedup
            await asyncio.sleep(delay)
            for sink, event in result.events:
                sink(event)

    def _check_running(self) -> None:
        if self._task is None or self._task.done():
            raise EngineUnavailable("simulated engine is not running")

    # ---- tokenizer ---------------------------------------------------------------------

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.core.tokenizer.encode(text)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.core.tokenizer.decode(token_ids)

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        return self.core.tokenizer.render_chat(messages, add_generation_prompt)

    def _tokens(self, token_ids: list[int] | None, text: str | None) -> list[int]:
        if token_ids is not None and text is not None:
            raise InvalidRequest("give token ids or text, not both")
        if text is not None:
            return self.core.tokenizer.encode(text)
        return list(token_ids or [])

    # ---- protocol ----------------------------------------------------------------------

    async def fill(self, request: FillRequest) -> FillResult:
        self._check_running()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def sink(event: Any) -> None:
            if not future.done():
                future.set_result(event)

        tokens = self._tokens(request.token_ids, request.text)
        self.core.fill(
            request.context_id, request.parent_context_id, tokens, request.scheduling, sink
        )
        self._wake.set()
        event = await future
        if isinstance(event, EngineError):
            raise event
        return event

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        self._check_running()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.core.generate(
            request.request_id,
            request.context_id,
            request.parent_context_id,
            self._tokens(request.prompt_token_ids, request.prompt_text),
            request.sampling,
            request.scheduling,
            queue.put_nowait,
            free_on_finish=request.free_on_finish,
        )
        self._wake.set()
        finished = False
        try:
            while not finished:
                event = await queue.get()
                if isinstance(event, EngineError):
                    finished = True
                    raise event
                finished = event.finish_reason is not None
                yield event
        finally:
            if not finished:  # the consumer left: stop the work
                for sink, event in self.core.abort(request.request_id):
                    sink(event)

    async def abort(self, request_id: str) -> None:
        for sink, event in self.core.abort(request_id):
            sink(event)

    async def free(self, context_id: str) -> None:
        self.core.free(context_id)

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        self._check_running()
        found = self.core.reschedule(request.context_id, request.scheduling)
        self._wake.set()
        return Rescheduled(found)

    async def stats(self) -> EngineStats:
        return self.core.snapshot()
