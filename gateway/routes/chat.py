"""`POST /v1/chat/completions`."""

from __future__ import annotations

from litestar import Controller, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ASGIApp

from gateway.protocol.openai import ChatCompletionRequest
from gateway.protocol.responses import ChatCompletion
from gateway.routes.common import (
    AnyRequest,
    authorize,
    documented_body,
    error_responses,
    services_of,
)
from gateway.serving.chat import create_chat_completion


class ChatController(Controller):
    path = "/chat/completions"
    tags = ("OpenAI",)

    @post(
        "/",
        operation_id="createChatCompletion",
        summary="Create a chat completion (SSE with stream=true)",
        status_code=200,
        dependencies=documented_body(ChatCompletionRequest),
        responses={
            200: ResponseSpec(data_container=ChatCompletion, description="chat.completion"),
            **error_responses(400, 401, 404, 413, 429, 503),
        },
    )
    async def create(self, request: AnyRequest) -> ASGIApp:
        tenant = await authorize(request)
        return await create_chat_completion(
            services_of(request), await request.body(), tenant, request.receive
        )
