"""`create_app`: the gateway's Litestar app (routes, error mapping, lifespan, OpenAPI docs)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin

from engine.client import EngineClient
from engine.errors import EngineError
from gateway.core.config import CoreConfig
from gateway.errors import ApiError, bad_request, from_engine, too_large
from gateway.protocol.responses import ENCODER
from gateway.routes.admin import AdminController
from gateway.routes.calls import CallsController
from gateway.routes.chat import ChatController
from gateway.routes.completions import CompletionsController
from gateway.routes.models import ModelsController
from gateway.routes.ops import OpsController
from gateway.routes.sessions import SessionsController
from gateway.services import build_services
from gateway.settings import Settings
from gateway.state import StateStore

log = logging.getLogger(__name__)

_ROUTES = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/models": "models",
}
_HTTP_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}


def _route_label(path: str) -> str:
    for prefix, label in _ROUTES.items():
        if path.startswith(prefix):
            return label
    return "other"


def _as_api_error(exc: Exception, max_body_bytes: int, where: str) -> ApiError:
    """Any exception as the client should see it; `where` is "METHOD /path"."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EngineError):
        return from_engine(exc)
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        key = extra[0].get("key") if extra and isinstance(extra[0], dict) else None
        return bad_request(f"Invalid request: {exc.detail}.", param=key)
    if isinstance(exc, HTTPException):
        if exc.status_code == 413:
            return too_large(max_body_bytes)
        if isinstance(exc, NotFoundException | MethodNotAllowedException):
            return ApiError(exc.status_code, f"Invalid URL or method ({where}).", code=None)
        kind = _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
        if exc.status_code >= 500:
            kind = "server_error"
        return ApiError(exc.status_code, exc.detail, type=kind, code=None)
    log.exception("unhandled error", exc_info=exc)
    return ApiError(
        500,
        "The server had an error while processing your request.",
        type="server_error",
        code="internal_error",
    )


def create_app(
    settings: Settings | None = None,
    engines: Sequence[EngineClient] | None = None,
    store: StateStore | None = None,
    core: CoreConfig | None = None,
) -> Litestar:
    """The gateway app. `engines`: in-process engines (default: from settings, i.e. the
    builtin engine, or EchoEngine with `echo`); remote ones come from `settings.engine_urls`."""
    settings = settings or Settings()
    if engines is None:
        from gateway.engines import local_engines

        engines = local_engines(settings)
    services = build_services(settings, engines, store, core)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.close()

    def on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        where = f"{request.scope['method']} {request.scope['path']}"
        error = _as_api_error(exc, settings.max_body_bytes, where)
        services.metrics.failed(_route_label(request.scope["path"]), error.status)
        return Response(
            ENCODER.encode(error.body()),
            status_code=error.status,
            media_type="application/json",
            headers=error.headers,
        )

    v1 = Router(
        "/v1",
        route_handlers=[
            ChatController,
            CompletionsController,
            ModelsController,
            SessionsController,
            CallsController,
        ],
    )
    app = Litestar(
        route_handlers=[v1, OpsController, AdminController],
        lifespan=[lifespan],
        exception_handlers={Exception: on_error},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Parrot",
            version="0.1.0",
            description="OpenAI-compatible API of the Parrot gateway, with Parrot extensions.",
            path="/docs",
            render_plugins=[ScalarRenderPlugin()],
        ),
        logging_config=None,
    )
    app.state.services = services
    return app
