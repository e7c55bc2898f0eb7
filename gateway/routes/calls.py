"""`/v1/sessions/{sid}/calls` and `/graph`: submit semantic calls; they return at once."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import FromPath

from gateway.protocol.semantic import (
    CALL_REQUEST,
    GRAPH_REQUEST,
    CallCreated,
    CallRequest,
    GraphCreated,
    GraphRequest,
)
from gateway.routes.common import (
    AnyRequest,
    authorize,
    documented_body,
    error_responses,
    services_of,
)
from gateway.serving.validation import decode


class CallsController(Controller):
    path = "/sessions/{session_id:str}"
    tags = ("Semantic variables",)

    @post(
        "/calls",
        operation_id="submitCall",
        summary="Submit a semantic call; returns its output variable ids at once",
        status_code=200,
        dependencies=documented_body(CallRequest),
        responses=error_responses(400, 401, 404, 503),
    )
    async def submit(self, request: AnyRequest, session_id: FromPath[str]) -> CallCreated:
        tenant = await authorize(request)
        body: CallRequest = decode(CALL_REQUEST, await request.body())
        core = services_of(request).core
        created = await core.submit(session_id, tenant, [body], graph_form=False)
        return created[0]

    @post(
        "/graph",
        operation_id="submitGraph",
        summary="Submit many calls at once; `ref` bindings ('INDEX.OUTPUT') link them",
        status_code=200,
        dependencies=documented_body(GraphRequest),
        responses=error_responses(400, 401, 404, 503),
    )
    async def submit_graph(self, request: AnyRequest, session_id: FromPath[str]) -> GraphCreated:
        tenant = await authorize(request)
        body: GraphRequest = decode(GRAPH_REQUEST, await request.body())
        core = services_of(request).core
        created = await core.submit(session_id, tenant, body.calls, graph_form=True)
        return GraphCreated(calls=created)
