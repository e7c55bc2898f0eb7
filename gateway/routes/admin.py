"""`/admin/engines`: list the pool, and let engines (or operators) register engine URLs."""

from __future__ import annotations

import msgspec
from litestar import Controller, get, post

from gateway.errors import bad_request
from gateway.pool.members import Member
from gateway.routes.common import (
    AnyRequest,
    authorize,
    documented_body,
    error_responses,
    services_of,
)
from gateway.serving.validation import decode


class EngineRegistration(msgspec.Struct, frozen=True):
    url: str


_REGISTRATION = msgspec.json.Decoder(EngineRegistration)


class EngineView(msgspec.Struct):
    engine_id: str
    url: str | None
    model: str | None
    backend: str | None
    healthy: bool
    inflight: int
    running: int | None
    waiting: int | None


def _view(member: Member) -> EngineView:
    info, stats = member.info, member.stats
    return EngineView(
        engine_id=member.member_id,
        url=member.url,
        model=info.model if info else None,
        backend=info.backend if info else None,
        healthy=member.healthy,
        inflight=member.inflight,
        running=stats.num_running if stats else None,
        waiting=stats.num_waiting if stats else None,
    )


class AdminController(Controller):
    path = "/admin/engines"
    tags = ("Admin",)

    @get("/", operation_id="listEngines", summary="The engine pool and its health")
    async def list_engines(self, request: AnyRequest) -> list[EngineView]:
        await authorize(request)
        return [_view(m) for m in services_of(request).pool.members]

    @post(
        "/",
        operation_id="registerEngine",
        summary="Add an engine server (`parrot engine`) to the pool of every replica",
        status_code=200,
        responses=error_responses(400, 401),
        dependencies=documented_body(EngineRegistration),
    )
    async def register(self, request: AnyRequest) -> EngineView:
        await authorize(request)
        data = decode(_REGISTRATION, await request.body())
        if not data.url.startswith(("http://", "https://")):
            raise bad_request("'url' must be an http(s) URL.", param="url")
        member = await services_of(request).pool.register(data.url)
        return _view(member)
