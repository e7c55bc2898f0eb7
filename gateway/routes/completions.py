"""`POST /v1/completions`."""

from __future__ import annotations

from litestar import Controller, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ASGIApp

from gateway.protocol.openai import CompletionRequest
from gateway.protocol.responses import Completion
from gateway.routes.common import (
    AnyRequest,
    authorize,
    documented_body,
    error_responses,
    services_of,
)
from gateway.serving.completions import create_completion


class CompletionsController(Controller):
    path = "/completions"
    tags = ("OpenAI",)

    @post(
        "/",
        operation_id="createCompletion",
        summary="Create a completion (SSE with stream=true)",
        status_code=200,
        dependencies=documented_body(CompletionRequest),
        responses={
            200: ResponseSpec(data_container=Completion, description="text_completion"),
            **error_responses(400, 401, 404, 413, 429, 503),
        },
    )
    async def create(self, request: AnyRequest) -> ASGIApp:
        tenant = await authorize(request)
        return await create_completion(
            services_of(request), await request.body(), tenant, request.receive
        )
