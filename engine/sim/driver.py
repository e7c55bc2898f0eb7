"""Run `AppSpec`s on engines through a `Router`, recording when every call ran.

The driver is plain asyncio over `EngineClient`s, so the same code measures real engines in
real time and simulated engines on the virtual clock (engine/sim/clock.py). A call starts
when its inputs are generated; the router picks its engine (and may hold it back).

Request-level routers (`app_aware = False`) see independent requests, as behind an
OpenAI-compatible endpoint: every call pays the client round trip `client_rtt_s` (the
client orchestrates the DAG) and carries no objective, app or group. App-aware routers (the
Parrot scheduler) get the DAG server-side (one round trip per app), pass objectives, apps
and task groups to the engines, and fill each shared prefix once per engine as a context
that the calls fork; sibling calls of an app whose prompts start with the same shared prefix
and the same earlier outputs (the architect's design) fork one session prefix per engine,
filled as a fork of the shared prefix and freed when the app ends.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.client import EngineClient
from engine.errors import EngineError
from engine.protocol import FillRequest, GenerateRequest, Objective, SamplingParams, Scheduling
from engine.sim.workload import AppSpec, CallSpec, OutputOf, Shared


@dataclass(slots=True)
class CallView:
    """A ready call as a router sees it."""

    app_id: str
    name: str
    objective: Objective
    group: str | None
    seq: int
    prompt_ids: list[int]
    output_tokens: int
    prefix_key: str | None = None
    prefix_tokens: int = 0
    priority: int = 0
    run_key: str | None = None  # a session prefix: the shared prefix + leading outputs
    run_tokens: int = 0  # beyond prefix_tokens


class Router(Protocol):
    name: str
    app_aware: bool

    async def acquire(self, call: CallView) -> int:
        """The index of the engine to run `call` on (may wait for capacity)."""

    def release(self, call: CallView, engine: int) -> None: ...

    def observe(self, engine: int, s_per_token: float) -> None:
        """A latency-critical call on `engine` decoded at this pace."""


@dataclass(slots=True)
class CallResult:
    name: str
    engine: int
    ready_s: float
    start_s: float
    end_s: float
    output_tokens: int
    cached_tokens: int = 0
    error: str | None = None


@dataclass(slots=True)
class AppResult:
    app_id: str
    kind: str
    arrival_s: float
    end_s: float = 0.0
    calls: list[CallResult] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.arrival_s

    @property
    def failed(self) -> bool:
        return any(c.error for c in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(c.output_tokens for c in self.calls)


class _Prefixes:
    """Prefixes filled once per engine as contexts that calls fork: shared ones (kept to the
    end) and apps' session prefixes (freed with `drop`)."""

    def __init__(self) -> None:
        self._fills: dict[tuple[int, str], asyncio.Future[str]] = {}

    async def context(
        self,
        index: int,
        engine: EngineClient,
        key: str,
        token_ids: Sequence[int],
        parent: str | None = None,
        scheduling: Scheduling = Scheduling(),
    ) -> str:
        slot = (index, key)
        future = self._fills.get(slot)
        if future is None:
            future = self._fills[slot] = asyncio.get_running_loop().create_future()
            context_id = f"prefix:{key}"
            try:
                await engine.fill(
                    FillRequest(
                        context_id=context_id,
                        parent_context_id=parent,
                        token_ids=list(token_ids),
                        scheduling=scheduling,
                    )
                )
                future.set_result(context_id)
            except EngineError as exc:
                del self._fills[slot]
                future.set_exception(exc)
        return await asyncio.shield(future)

    async def drop(self, engines: Sequence[EngineClient], prefix: str) -> None:
        """Free the contexts of every key starting with `prefix` (an app's session prefixes)."""
        for (index, key), future in list(self._fills.items()):
            if key.startswith(prefix) and future.done() and not future.exception():
                del self._fills[(index, key)]
                await engines[index].free(future.result())


def _run(call: CallSpec) -> tuple[str, ...] | None:
    """The shared prefix and the outputs right after it (the app's leading variables), when
    there are such outputs: sibling calls with the same run share a session prefix."""
    if not call.prompt or not isinstance(call.prompt[0], Shared):
        return None
    run = [call.prompt[0].key]
    for segment in call.prompt[1:]:
        if not isinstance(segment, OutputOf):
            break
        run.append(segment.call)
    return tuple(run) if len(run) > 1 else None


# (call) -> (objective, priority) that an app-aware router sends to the engines.
Deduce = Callable[[CallSpec], tuple[Objective, int]]


def as_declared(call: CallSpec) -> tuple[Objective, int]:
    return call.objective, 0


class Driver:
    def __init__(
        self,
        engines: Sequence[EngineClient],
        router: Router,
        client_rtt_s: float = 0.0,
        deduce: Deduce = as_declared,
    ) -> None:
        self.engines = list(engines)
        self.router = router
        self.client_rtt_s = client_rtt_s
        self.deduce = deduce
        self._prefixes = _Prefixes()
        self._seq = itertools.count()
        self._t0 = 0.0

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    async def run(self, apps: Sequence[AppSpec]) -> list[AppResult]:
        self._t0 = asyncio.get_running_loop().time()
        return list(await asyncio.gather(*(self._app(app) for app in apps)))

    async def _app(self, app: AppSpec) -> AppResult:
        result = AppResult(app.app_id, app.kind, app.arrival_s)
        await asyncio.sleep(max(app.arrival_s - self._now(), 0.0))
        if self.router.app_aware:
            await asyncio.sleep(self.client_rtt_s)  # one submission of the whole DAG
        outputs: dict[str, asyncio.Future[list[int]]] = {
            c.name: asyncio.get_running_loop().create_future() for c in app.calls
        }
        runs = [_run(c) for c in app.calls]
        shared_runs = {r for r in runs if r is not None and runs.count(r) > 1}
        await asyncio.gather(*(self._call(app, c, outputs, result, shared_runs) for c in app.calls))
        result.end_s = self._now()
        await self._prefixes.drop(self.engines, f"{app.app_id}|")
        return result

    async def _call(
        self,
        app: AppSpec,
        call: CallSpec,
        outputs: dict,
        result: AppResult,
        shared_runs: set[tuple[str, ...]],
    ) -> None:
        try:
            inputs = {d: await outputs[d] for d in call.deps}
        except EngineError:
            outputs[call.name].set_exception(EngineError("an input call failed"))
            return
        if not self.router.app_aware:
            await asyncio.sleep(self.client_rtt_s)  # the client saw the input, sends the call
        prompt: list[int] = []
        for segment in call.prompt:
            if isinstance(segment, OutputOf):
                prompt += inputs[segment.call]
            else:
                prompt += segment.token_ids
        first = call.prompt[0]
        shared = first if isinstance(first, Shared) else None
        objective, priority = self.deduce(call) if self.router.app_aware else ("latency", 0)
        run = _run(call)
        run_key, run_tokens = None, 0
        if self.router.app_aware and shared is not None and run is not None and run in shared_runs:
            run_key = f"{app.app_id}|" + "|".join(run)
            run_tokens = sum(len(inputs[name]) for name in run[1:])
        view = CallView(
            app.app_id,
            call.name,
            objective,
            call.group,
            next(self._seq),
            prompt,
            call.output_tokens,
            shared.key if shared else None,
            len(shared.token_ids) if shared else 0,
            priority,
            run_key,
            run_tokens,
        )
        ready = self._now()
        index = await self.router.acquire(view)
        start = self._now()
        record = CallResult(call.name, index, ready, start, start, 0)
        result.calls.append(record)
        try:
            ids, cached = await self._generate(index, app, call, view, shared)
        except EngineError as exc:
            record.error = f"{exc.code}: {exc.message}"
            outputs[call.name].set_exception(exc)
            return
        finally:
            record.end_s = self._now()
            self.router.release(view, index)
        record.output_tokens, record.cached_tokens = len(ids), cached
        if view.objective == "latency" and len(ids) > 1:
            self.router.observe(index, (record.end_s - start) / len(ids))
        outputs[call.name].set_result(ids)

    async def _generate(
        self, index: int, app: AppSpec, call: CallSpec, view: CallView, shared: Shared | None
    ) -> tuple[list[int], int]:
        engine = self.engines[index]
        aware = self.router.app_aware
        scheduling = Scheduling()
        if aware:
            scheduling = Scheduling(
                objective=view.objective,
                priority=view.priority,
                app_id=app.app_id,
                group_id=call.group,
            )
        parent, prompt = None, view.prompt_ids
        if aware and shared is not None and engine.info.supports_fork:
            parent = await self._prefixes.context(index, engine, shared.key, shared.token_ids)
            cut = len(shared.token_ids)
            if view.run_key is not None:
                end = cut + view.run_tokens
                parent = await self._prefixes.context(
                    index, engine, view.run_key, prompt[cut:end], parent, scheduling
                )
                cut = end
            prompt = prompt[cut:]
        request = GenerateRequest(
            request_id=f"{view.name}#{view.seq}",
            context_id=f"{view.name}#{view.seq}",
            parent_context_id=parent,
            prompt_token_ids=prompt,
            sampling=SamplingParams(
                max_tokens=call.output_tokens, temperature=0.0, ignore_eos=True
            ),
            scheduling=scheduling,
            free_on_finish=True,
        )
        ids: list[int] = []
        cached = 0
        async for chunk in engine.generate(request):
            ids += chunk.token_ids
            if chunk.usage is not None:
                cached = chunk.usage.cached_tokens
        return ids, cached
