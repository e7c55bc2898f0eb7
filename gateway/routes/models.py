"""`GET /v1/models` and `GET /v1/models/{model_id}`."""

from __future__ import annotations

import time

from litestar import Controller, get
from litestar.params import FromPath

from gateway.errors import model_not_found
from gateway.protocol.responses import ModelCard, ModelList
from gateway.routes.common import AnyRequest, authorize, error_responses, services_of


def _cards(request: AnyRequest) -> dict[str, ModelCard]:
    created = int(time.time())
    return {
        name: ModelCard(name, "model", created, "parrot", info.context_length)
        for name, info in services_of(request).pool.models().items()
    }


class ModelsController(Controller):
    path = "/models"
    tags = ("OpenAI",)

    @get("/", operation_id="listModels", summary="List the served models")
    async def list_models(self, request: AnyRequest) -> ModelList:
        await authorize(request)
        return ModelList("list", list(_cards(request).values()))

    @get(
        "/{model_id:path}",
        operation_id="retrieveModel",
        summary="Describe one model",
        responses=error_responses(401, 404),
    )
    async def retrieve(self, request: AnyRequest, model_id: FromPath[str]) -> ModelCard:
        await authorize(request)
        model_id = model_id.lstrip("/")
        card = _cards(request).get(model_id)
        if card is None:
            raise model_not_found(model_id)
        return card
