"""`/v1/sessions`: sessions and their semantic variables (create, set, get, stream)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, QueryParameter
from litestar.types import ASGIApp

from gateway.core.streams import variable_events
from gateway.protocol.semantic import (
    SESSION_CREATE,
    VARIABLE_CREATE,
    VARIABLE_SET,
    Criteria,
    SessionCreate,
    SessionInfo,
    VariableCreate,
    VariableSet,
    VariableView,
)
from gateway.routes.common import (
    AnyRequest,
    authorize,
    documented_body,
    error_responses,
    services_of,
)
from gateway.serving.validation import decode
from gateway.transport import SseResponse

DEFAULT_WAIT_S = 300.0

CriteriaQuery = Annotated[
    Criteria | None,
    QueryParameter(
        name="criteria",
        description="The application's performance objective for this value: `latency` "
        "marks the calls producing it (and their upstream) latency-critical; `throughput` or "
        "none leaves them throughput work.",
    ),
]
TimeoutQuery = Annotated[
    float,
    QueryParameter(
        name="timeout",
        ge=0,
        description="Seconds to wait for the value; at the timeout the answer is 200 with "
        "`ready: false`.",
    ),
]
SessionId = FromPath[str]
VariableId = FromPath[str]


class SessionDeleted(msgspec.Struct, frozen=True):
    id: str
    object: str = "session"
    deleted: bool = True


def _info(record: Any) -> SessionInfo:
    return SessionInfo(
        id=record.session_id, created_at=record.created_at, idle_ttl_s=record.idle_ttl_s
    )


class SessionsController(Controller):
    path = "/sessions"
    tags = ("Semantic variables",)

    @post(
        "/",
        operation_id="createSession",
        summary="Start a session (an application run); its variables and calls live in it",
        status_code=200,
        dependencies=documented_body(SessionCreate),
        responses=error_responses(400, 401, 429),
    )
    async def create(self, request: AnyRequest) -> SessionInfo:
        tenant = await authorize(request)
        raw = await request.body()
        body = decode(SESSION_CREATE, raw) if raw.strip() else SessionCreate()
        record = await services_of(request).core.create_session(
            tenant, body.idle_ttl_s, body.cache_salt
        )
        return _info(record)

    @get(
        "/{session_id:str}",
        operation_id="getSession",
        summary="Check that a session lives",
        responses=error_responses(401, 404),
    )
    async def retrieve(self, request: AnyRequest, session_id: SessionId) -> SessionInfo:
        tenant = await authorize(request)
        core = services_of(request).core
        graph = await core.sessions.get(session_id, tenant)
        return SessionInfo(id=session_id, created_at=graph.created_at, idle_ttl_s=graph.idle_ttl_s)

    @delete(
        "/{session_id:str}",
        operation_id="deleteSession",
        summary="End a session: cancel its calls and free every engine context it holds",
        status_code=200,
        responses=error_responses(401, 404),
    )
    async def remove(self, request: AnyRequest, session_id: SessionId) -> SessionDeleted:
        tenant = await authorize(request)
        await services_of(request).core.delete_session(session_id, tenant)
        return SessionDeleted(session_id)

    @post(
        "/{session_id:str}/variables",
        operation_id="createVariable",
        summary="Create a variable: an input with a value, or a placeholder to set later",
        status_code=200,
        dependencies=documented_body(VariableCreate),
        responses=error_responses(400, 401, 404),
    )
    async def create_variable(self, request: AnyRequest, session_id: SessionId) -> VariableView:
        tenant = await authorize(request)
        body: VariableCreate = decode(VARIABLE_CREATE, await request.body())
        return await services_of(request).core.create_variable(
            session_id, tenant, body.name, body.value
        )

    @put(
        "/{session_id:str}/variables/{variable_id:str}",
        operation_id="setVariable",
        summary="Set an input variable's value (wakes the calls waiting on it)",
        dependencies=documented_body(VariableSet),
        responses=error_responses(400, 401, 404, 409),
    )
    async def set_variable(
        self, request: AnyRequest, session_id: SessionId, variable_id: VariableId
    ) -> VariableView:
        tenant = await authorize(request)
        body: VariableSet = decode(VARIABLE_SET, await request.body())
        return await services_of(request).core.set_variable(
            session_id, tenant, variable_id, body.value
        )

    @get(
        "/{session_id:str}/variables/{variable_id:str}",
        operation_id="getVariable",
        summary="Wait for a variable's value (with the application's performance criteria)",
        responses=error_responses(400, 401, 404, 500, 503),
    )
    async def get_variable(
        self,
        request: AnyRequest,
        session_id: SessionId,
        variable_id: VariableId,
        criteria: CriteriaQuery = None,
        timeout: TimeoutQuery = DEFAULT_WAIT_S,
    ) -> VariableView:
        tenant = await authorize(request)
        return await services_of(request).core.get_variable(
            session_id, tenant, variable_id, criteria, timeout
        )

    @get(
        "/{session_id:str}/variables/{variable_id:str}/stream",
        operation_id="streamVariable",
        summary="Stream a variable's text as it is generated (SSE), ending with its value",
        responses=error_responses(400, 401, 404),
    )
    async def stream_variable(
        self,
        request: AnyRequest,
        session_id: SessionId,
        variable_id: VariableId,
        criteria: CriteriaQuery = None,
        timeout: TimeoutQuery = DEFAULT_WAIT_S,
    ) -> ASGIApp:
        tenant = await authorize(request)
        core = services_of(request).core
        graph, variable = await core.lookup(session_id, tenant, variable_id)
        if variable.error is not None:
            raise variable.error  # failed before the stream: a plain error response
        core.expect(graph, variable, criteria)
        wait = min(timeout, core.config.max_wait_s)

        async def nothing() -> None:
            return None

        headers = {"x-parrot-variable": variable.var_id}
        return SseResponse(variable_events(graph, variable, wait), nothing, headers)
