"""`StoreMirror`: keeps in-process variables and their state-store records in step.

Values generated here are written to the store off the hot path (local waiters were
already woken); variables created or produced by another replica are adopted from the
store and followed by a watcher that waits on the store's cross-replica wake-ups.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.core.errors import CallFailed, SessionNotFound, VariableNotFound
from gateway.core.graph import SessionGraph, Variable
from gateway.core.records import apply_record, failure_of, to_record, view_of_record
from gateway.protocol.semantic import VariableView
from gateway.state import StateStore

log = logging.getLogger(__name__)

WATCH_SLICE_S = 60.0  # a watcher re-arms its store wait this often


class StoreMirror:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._background: set[asyncio.Task[None]] = set()
        self._watchers: dict[str, set[asyncio.Task[None]]] = {}

    async def put(self, graph: SessionGraph, variable: Variable) -> None:
        """Write now (creation, client sets): the answer must not precede the record."""
        if not await self._store.put_variable(to_record(variable)):
            raise SessionNotFound(graph.session_id)

    def publish(self, graph: SessionGraph | None, variable: Variable) -> None:
        """A generated value (or a failure) goes to the store in the background."""
        if graph is None or graph.closed:
            return
        task = asyncio.get_running_loop().create_task(self._publish(variable))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish(self, variable: Variable) -> None:
        try:
            await self._store.put_variable(to_record(variable))
        except Exception as exc:  # other replicas miss it; this one still serves it
            log.warning("could not store variable %s: %s", variable.var_id, exc)

    async def adopt(self, graph: SessionGraph, var_id: str) -> Variable | None:
        """A variable known only to the store, mirrored here; None if it does not exist."""
        record = await self._store.get_variable(graph.session_id, var_id)
        if record is None or graph.closed:
            return None
        variable = graph.variables.get(var_id)
        if variable is not None:  # adopted by a concurrent request meanwhile
            return variable
        variable = Variable(var_id, record.name, graph.session_id)
        graph.variables[var_id] = variable
        apply_record(variable, record)
        if not variable.done:
            watchers = self._watchers.setdefault(graph.session_id, set())
            task = asyncio.get_running_loop().create_task(self._watch(graph, variable))
            watchers.add(task)
            task.add_done_callback(watchers.discard)
        return variable

    async def _watch(self, graph: SessionGraph, variable: Variable) -> None:
        while not variable.done and not graph.closed:
            record = await self._store.wait_variable(
                graph.session_id, variable.var_id, WATCH_SLICE_S
            )
            if record is None:
                message = f"variable '{variable.var_id}' vanished"
                variable.fail(
                    CallFailed(404, message, "variable_not_found", "invalid_request_error")
                )
            else:
                apply_record(variable, record)

    async def wait(self, graph: SessionGraph, var_id: str, timeout_s: float) -> VariableView:
        """GET of a variable this replica has no graph for: wait on the store."""
        record = await self._store.wait_variable(graph.session_id, var_id, timeout_s)
        if record is None:
            raise VariableNotFound(var_id)
        if record.status == "failed":
            raise failure_of(record)
        return view_of_record(record)

    def forget(self, session_id: str) -> list[asyncio.Task[None]]:
        """Stop following a session's variables; returns the cancelled watchers."""
        tasks = list(self._watchers.pop(session_id, ()))
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self) -> None:
        tasks = [*self._background, *(t for ts in self._watchers.values() for t in ts)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
