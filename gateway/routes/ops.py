"""Operations: `/health` (liveness), `/ready` (an engine serves), `/metrics` (Prometheus)."""

from __future__ import annotations

import msgspec
from litestar import Controller, Response, get

from gateway.metrics import CONTENT_TYPE
from gateway.routes.common import AnyRequest, services_of


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    engines_up: int
    engines_total: int
    state_store: bool


class OpsController(Controller):
    tags = ("Operations",)

    @get("/health", operation_id="health", summary="Liveness: the process answers")
    async def health(self) -> Health:
        return Health("ok")

    @get(
        "/ready",
        operation_id="ready",
        summary="Readiness: at least one engine is up and the state store answers",
    )
    async def ready(self, request: AnyRequest) -> Response[Readiness]:
        services = services_of(request)
        members = services.pool.members
        up = sum(m.healthy for m in members)
        store_ok = await services.store.ping()
        ready = up > 0 and store_ok
        body = Readiness("ready" if ready else "unavailable", up, len(members), store_ok)
        return Response(body, status_code=200 if ready else 503)

    @get("/metrics", operation_id="metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE)
    async def metrics(self, request: AnyRequest) -> Response[bytes]:
        return Response(services_of(request).metrics.render(), media_type=CONTENT_TYPE)
