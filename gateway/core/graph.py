"""The call graph of one session: semantic variables, the calls that read and write them.

    var(task) ──> Call WritePythonCode ──> var(code) ──> Call WriteTestCode ──> var(test)
        └────────────────────────────────────────────────────┘

A variable is produced by at most one call (or set by the client) and read by any number
of calls. `Variable.resolve/fail` wake everything waiting on it: local GETs, SSE streams
and consumer calls (through `on_ready` callbacks), all synchronously and without polling.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.protocol import Objective, SamplingParams, Scheduling
from gateway.core.errors import CallFailed
from gateway.core.template import Segment


class CallState(enum.Enum):
    WAITING = "waiting"  # some input is not ready
    QUEUED = "queued"  # ready, waiting for the scheduler to place it
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True, eq=False)
class Variable:
    var_id: str
    name: str
    session_id: str
    producer: Call | None = None
    consumers: list[Call] = field(default_factory=list)
    value: str | None = None
    error: CallFailed | None = None
    token_ids: dict[str, list[int]] = field(default_factory=dict)  # model -> exact ids
    criteria: Objective | None = None  # the strongest criteria a GET asked for
    parts: list[str] = field(default_factory=list)  # text generated so far
    streams: list[asyncio.Queue[str | None]] = field(default_factory=list)
    on_done: list[Callable[[Variable], None]] = field(default_factory=list)
    done_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.done_event.is_set()

    @property
    def ready(self) -> bool:
        return self.done and self.error is None

    def emit(self, text: str) -> None:
        """Generated text arrived (streaming)."""
        self.parts.append(text)
        for queue in self.streams:
            queue.put_nowait(text)

    def resolve(self, value: str, model: str | None = None, ids: list[int] | None = None) -> bool:
        """Set the value and wake everyone; False if it was already done."""
        if self.done:
            return False
        self.value = value
        if model is not None and ids is not None:
            self.token_ids[model] = ids
        self._finish()
        return True

    def fail(self, error: CallFailed) -> bool:
        if self.done:
            return False
        self.error = error
        self._finish()
        return True

    def _finish(self) -> None:
        self.done_event.set()
        for queue in self.streams:
            queue.put_nowait(None)
        callbacks, self.on_done = self.on_done, []
        for callback in callbacks:
            callback(self)


Bound = Variable | str  # an input is a variable or a literal value


@dataclass(slots=True, eq=False)
class OutputSlot:
    name: str
    variable: Variable
    sampling: SamplingParams


@dataclass(slots=True, eq=False)
class Call:
    call_id: str
    session: SessionGraph
    model: str
    segments: tuple[Segment, ...]
    inputs: dict[str, Bound]
    outputs: list[OutputSlot]
    chat: bool = False  # rendered by the chat template (it wrote any BOS itself)
    hint: Objective | None = None
    seq: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    state: CallState = CallState.WAITING
    missing: int = 0  # inputs not ready yet
    latency_goal: bool = False  # a GET asked for latency downstream of this call
    awaited: bool = False  # a GET waits on this call's output or one downstream of it
    run: tuple | None = None  # its leading text-and-variables run, once computed (entries.py)
    run_known: bool = False
    group_id: str | None = None
    attempts: int = 0
    scheduling: Scheduling | None = None  # fixed when the call is placed on an engine
    task: asyncio.Task[None] | None = None

    @property
    def context_id(self) -> str:
        """The engine context the call generates into."""
        return f"call-{self.call_id}"

    @property
    def stage(self) -> int:
        """The output being generated (or next to be): the first one not done yet."""
        done = sum(slot.variable.done for slot in self.outputs)
        return min(done, len(self.outputs) - 1)

    @property
    def input_vars(self) -> list[Variable]:
        seen: dict[int, Variable] = {}
        for bound in self.inputs.values():
            if isinstance(bound, Variable):
                seen.setdefault(id(bound), bound)
        return list(seen.values())

    @property
    def objective(self) -> Objective:
        """Explicit hint > task group (finish as a whole: throughput) > deduced latency."""
        if self.hint is not None:
            return self.hint
        if self.group_id is not None:
            return "throughput"
        return "latency" if self.latency_goal else "throughput"

    @property
    def priority(self) -> int:
        # A task group whose result someone awaits with latency goes before background work.
        return 1 if self.latency_goal else 0

    @property
    def finished(self) -> bool:
        return self.state in (CallState.DONE, CallState.FAILED)


@dataclass(slots=True, eq=False)
class SessionGraph:
    session_id: str
    tenant: str
    cache_salt: str = ""
    created_at: float = 0.0  # wall clock, as the store's record has it
    idle_ttl_s: float = 0.0
    variables: dict[str, Variable] = field(default_factory=dict)
    calls: dict[str, Call] = field(default_factory=dict)
    last_submit: float = 0.0
    app_rank: int | None = None  # set when the session's first call is dispatched
    prefix_keys: set[bytes] = field(default_factory=set)  # shared prefixes its calls used
    closed: bool = False

    @property
    def app_id(self) -> str:
        # The same id the OpenAI routes give requests that join this session.
        return f"{self.tenant}/{self.session_id}"

    def live_calls(self) -> list[Call]:
        """Calls not finished yet (finished ones leave `calls`; variables still point at them)."""
        return list(self.calls.values())
