"""A variable's value as server-sent events, token text as it is generated.

    data: {"id": "var-..", "delta": "def snake"}      text since the previous frame
    data: {"id": "var-..", "delta": "_game():"}
    data: {"id": "var-..", "name": "code", "ready": true, "status": "ready", "value": ".."}
    data: [DONE]

A failure after the stream started is one `data: {"error": {...}}` frame before `[DONE]`;
at the timeout the last frame is the not-ready view.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from gateway.core.graph import SessionGraph, Variable
from gateway.core.records import view_of
from gateway.errors import ApiError
from gateway.protocol.semantic import StreamDelta
from gateway.transport import DONE, error_frame, frame


async def variable_events(
    graph: SessionGraph, variable: Variable, timeout_s: float
) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    # Snapshot and subscribe in one step (no await between): no text is lost or repeated.
    sent = "".join(variable.parts)
    variable.streams.append(queue)
    deadline = time.monotonic() + timeout_s
    try:
        if sent:
            yield frame(StreamDelta(variable.var_id, sent))
        while not variable.done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if item is None:
                break
            sent += item
            yield frame(StreamDelta(variable.var_id, item))
        if graph.closed:
            yield error_frame(
                ApiError(404, f"session '{graph.session_id}' ended", code="session_not_found")
            )
        elif variable.error is not None:
            yield error_frame(variable.error)
        else:
            if variable.ready and not sent and variable.value:
                yield frame(StreamDelta(variable.var_id, variable.value))  # set, not generated
            yield frame(view_of(variable))
        yield DONE
    finally:
        if queue in variable.streams:
            variable.streams.remove(queue)
