"""`ParrotCore`: the semantic-variable service behind the /v1/sessions routes.

It wires the parts together: sessions (`SessionTable`), call building (`CallBuilder`),
objective deduction, the ready queue and placement (`Scheduler`), execution (`Executor`)
and cached contexts (`ContextManager`). Variables live in-process for speed (a generated
value wakes its consumers synchronously) and in the state store for every other replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence

from engine.protocol import ChatMessage, EngineInfo
from gateway.core.builder import CallBuilder, new_id
from gateway.core.chat import RenderChat
from gateway.core.config import CoreConfig
from gateway.core.contexts import ContextManager
from gateway.core.errors import CallFailed, SessionNotFound, VariableConflict, VariableNotFound
from gateway.core.executor import CallError, Executor
from gateway.core.graph import Call, CallState, SessionGraph, Variable
from gateway.core.mirror import StoreMirror
from gateway.core.objectives import form_task_group, hinted_latency, request_criteria
from gateway.core.records import view_of
from gateway.core.scheduler import Scheduler
from gateway.core.sessions import SessionTable
from gateway.core.tokens import TokenCache
from gateway.errors import ApiError, no_engine
from gateway.pool.members import EnginePool, Member
from gateway.protocol.semantic import CallCreated, CallRequest, Criteria, VariableView
from gateway.serving.dispatch import Dispatcher, SessionLease
from gateway.state import SessionRecord, StateStore

log = logging.getLogger(__name__)


class ParrotCore:
    def __init__(
        self, config: CoreConfig, store: StateStore, pool: EnginePool, dispatcher: Dispatcher
    ) -> None:
        self.config = config
        self._store = store
        self._pool = pool
        self._dispatcher = dispatcher
        self.contexts = ContextManager(config, secrets.token_hex(4))
        self.sessions = SessionTable(store, config, self._teardown)
        self.executor = Executor(
            config,
            self.contexts,
            TokenCache(),
            lambda member_id, rate: self.scheduler.caps.observe(member_id, rate),
        )
        self.scheduler = Scheduler(config, pool, self.contexts, self._run, self._unplaceable)
        self._seq = 0
        self.mirror = StoreMirror(store)

    async def start(self) -> None:
        self.sessions.start(lambda: self.contexts.expire(self.config.prefix_idle_ttl_s))

    async def close(self) -> None:
        await self.sessions.close()
        await self.scheduler.close()
        await self.contexts.close()
        await self.mirror.close()

    # ---- sessions ------------------------------------------------------------------

    async def create_session(
        self, tenant: str, idle_ttl_s: float | None = None, cache_salt: str | None = None
    ) -> SessionRecord:
        return await self.sessions.create(tenant, idle_ttl_s, cache_salt)

    async def delete_session(self, session_id: str, tenant: str) -> None:
        await self.sessions.delete(session_id, tenant)

    async def _teardown(self, graph: SessionGraph) -> None:
        graph.closed = True
        tasks = [c.task for c in graph.calls.values() if c.task is not None]
        for call in list(graph.calls.values()):
            self.scheduler.forget(call)
            call.state = CallState.FAILED
        for task in tasks:
            task.cancel()
        self.mirror.forget(graph.session_id)
        gone = CallFailed(
            404,
            SessionNotFound(graph.session_id).message,
            "session_not_found",
            "invalid_request_error",
        )
        for variable in graph.variables.values():
            variable.on_done.clear()  # nothing downstream runs any more
            variable.fail(gone)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.contexts.drop_session(graph.session_id)
        await self.contexts.drain()

    # ---- variables -----------------------------------------------------------------

    async def create_variable(
        self, session_id: str, tenant: str, name: str, value: str | None
    ) -> VariableView:
        graph = await self.sessions.get(session_id, tenant)
        variable = Variable(new_id("var"), name, session_id)
        if value is not None:
            variable.resolve(value)
        graph.variables[variable.var_id] = variable
        await self.mirror.put(graph, variable)
        return view_of(variable)

    async def set_variable(
        self, session_id: str, tenant: str, var_id: str, value: str
    ) -> VariableView:
        graph = await self.sessions.get(session_id, tenant)
        variable = graph.variables.get(var_id) or await self.mirror.adopt(graph, var_id)
        if variable is None:
            raise VariableNotFound(var_id)
        if variable.producer is not None:
            raise VariableConflict(
                f"variable '{var_id}' is the output of call "
                f"'{variable.producer.call_id}'; it cannot be set"
            )
        record = await self._store.get_variable(session_id, var_id)
        if variable.done or (record is not None and (record.done or record.producer)):
            raise VariableConflict(f"variable '{var_id}' already has a value or a producer")
        variable.resolve(value)
        await self.mirror.put(graph, variable)
        return view_of(variable)

    async def get_variable(
        self,
        session_id: str,
        tenant: str,
        var_id: str,
        criteria: Criteria | None,
        timeout_s: float,
    ) -> VariableView:
        """Wait up to `timeout_s` for the value; a not-ready view at the timeout."""
        graph = await self.sessions.get(session_id, tenant)
        variable = graph.variables.get(var_id)
        timeout_s = min(max(timeout_s, 0.0), self.config.max_wait_s)
        if variable is None:
            return await self.mirror.wait(graph, var_id, timeout_s)
        self.expect(graph, variable, criteria)
        if not variable.done and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(variable.done_event.wait(), timeout_s)
        return self._answer(graph, variable)

    def expect(self, graph: SessionGraph, variable: Variable, criteria: Criteria | None) -> None:
        """A client now waits on `variable`: deduce objectives, release held calls."""
        promoted = request_criteria(variable, criteria)
        self.scheduler.release(variable)
        self.scheduler.promote(promoted)

    def _answer(self, graph: SessionGraph, variable: Variable) -> VariableView:
        if graph.closed:
            raise SessionNotFound(graph.session_id)
        if variable.error is not None:
            raise variable.error
        return view_of(variable)

    async def lookup(
        self, session_id: str, tenant: str, var_id: str
    ) -> tuple[SessionGraph, Variable]:
        """The session and variable (mirrored here if created elsewhere), or a 404."""
        graph = await self.sessions.get(session_id, tenant)
        variable = graph.variables.get(var_id) or await self.mirror.adopt(graph, var_id)
        if variable is None:
            raise VariableNotFound(var_id)
        return graph, variable

    async def join_session(self, app_id: str, model: str, prompt: list[int]) -> SessionLease | None:
        """An OpenAI request with `parrot.session_id` forks the session's cached context
        that starts its prompt; 404 when the session is not the tenant's."""
        tenant, _, session_id = app_id.rpartition("/")
        graph = await self.sessions.get(session_id, tenant)
        if not self.config.share_prefixes:
            return None
        entry = self.contexts.match(session_id, graph.prefix_keys, model, prompt)
        if entry is None:
            return None
        return SessionLease(
            entry.member,
            entry.context_id,
            len(entry.token_ids),
            lambda: self.contexts.release(entry),
        )

    # ---- calls ---------------------------------------------------------------------

    def _render(self, model: str) -> RenderChat:
        async def render(messages: Sequence[ChatMessage], generation_prompt: bool) -> str:
            member = self._any_member(model)
            return await member.engine.render_chat(messages, generation_prompt)

        return render

    def _any_member(self, model: str) -> Member:
        members = self._pool.serving(model)
        if not members:
            raise no_engine(model, 1)
        return min(members, key=lambda m: m.url is not None)  # in-process first

    async def submit(
        self, session_id: str, tenant: str, requests: Sequence[CallRequest], graph_form: bool
    ) -> list[CallCreated]:
        graph = await self.sessions.get(session_id, tenant)
        infos: dict[str, EngineInfo] = {
            r.model: self._dispatcher.resolve(r.model) for r in requests
        }
        builder = CallBuilder(graph, lambda vid: self.mirror.adopt(graph, vid), self._render)
        batch = await builder.build(requests, infos, graph_form)
        await asyncio.gather(
            *(self.mirror.put(graph, s.variable) for c in batch.calls for s in c.outputs)
        )
        graph.last_submit = time.monotonic()
        for call in batch.calls:
            self._seq += 1
            call.seq = self._seq
            for slot in call.outputs:
                slot.variable.on_done.append(
                    lambda v: self.mirror.publish(self.sessions.find(v.session_id), v)
                )
        for call in batch.calls:
            hinted_latency(call)
            form_task_group(call)
            for slot in call.outputs:  # a GET may have come before the producer did
                request_criteria(slot.variable, slot.variable.criteria)
        for call in batch.calls:
            self._wire(call)
        return [
            CallCreated(id=c.call_id, outputs={s.name: s.variable.var_id for s in c.outputs})
            for c in batch.calls
        ]

    def _wire(self, call: Call) -> None:
        failed = None
        for variable in call.input_vars:
            if variable.error is not None:
                failed = failed or variable
            elif not variable.done:
                call.missing += 1
                variable.on_done.append(lambda v, call=call: self._input_done(call, v))
        if failed is not None:
            self._fail_input(call, failed)
        elif call.missing == 0:
            self.scheduler.enqueue(call)

    def _input_done(self, call: Call, variable: Variable) -> None:
        if call.finished or call.session.closed:
            return
        if variable.error is not None:
            # Not recursively: a long chain of failures would exhaust the stack.
            asyncio.get_running_loop().call_soon(self._fail_input, call, variable)
            return
        call.missing -= 1
        if call.missing == 0:
            self.scheduler.enqueue(call)

    def _fail_input(self, call: Call, variable: Variable) -> None:
        assert variable.error is not None
        self._fail(
            call,
            CallFailed.wrap(
                variable.error, f"input variable '{variable.var_id}' ('{variable.name}') failed"
            ),
        )

    def _fail(self, call: Call, error: ApiError) -> None:
        if call.finished:
            return
        call.state = CallState.FAILED
        self.scheduler.forget(call)
        call.session.calls.pop(call.call_id, None)
        failure = (
            error
            if isinstance(error, CallFailed)
            else CallFailed.wrap(error, f"call '{call.call_id}' failed")
        )
        for slot in call.outputs:
            slot.variable.fail(failure)

    def _unplaceable(self, call: Call) -> None:
        self._fail(call, no_engine(call.model, 1))

    async def _run(self, call: Call, member: Member) -> None:
        """Execute a placed call; settle its state however it ends."""
        try:
            outcome = await self.executor.run(call, member)
        except CallError as exc:
            self._fail(call, exc.error)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("call %s failed", call.call_id)
            self._fail(
                call,
                ApiError(500, f"internal error: {exc}", type="server_error", code="internal_error"),
            )
            return
        if outcome == "retry":
            self._pool.mark_failed(member, "unreachable while running a semantic call")
            call.attempts += 1
            if call.attempts >= self.config.max_attempts:
                self._fail(call, no_engine(call.model, 1))
            else:
                self.scheduler.enqueue(call)
            return
        call.state = CallState.DONE
        call.session.calls.pop(call.call_id, None)
        self.sessions.touch(call.session)
