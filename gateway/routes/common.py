"""What every controller shares: the services lookup, the API-key guard and OpenAPI helpers."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec

from gateway.errors import ErrorBody
from gateway.services import Services
from gateway.transport import header

AnyRequest = Request[Any, Any, Any]


def services_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    return connection.app.state.services


async def authorize(request: AnyRequest) -> str:
    """The caller's tenant, first thing in every /v1 and /admin handler (401/429 otherwise).

    A call rather than a Litestar guard: guards copy the connection, which costs more than
    a whole echo request; the header is read straight from the ASGI scope for the same reason.
    """
    return await services_of(request).admit(header(request.scope, b"authorization"))


def documented_body(body_type: type) -> dict[str, Provide]:
    """Routes read and decode their raw body themselves (strict msgspec decoding with OpenAI
    errors); this unused dependency only tells the OpenAPI schema what that body is."""

    def body(data: Any) -> None:  # pragma: no cover - never resolved
        return None

    body.__annotations__ = {"data": body_type, "return": None}
    return {"_documented_body": Provide(body, sync_to_thread=False)}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=ErrorBody, description="OpenAI-shaped error")
        for status in statuses
    }
