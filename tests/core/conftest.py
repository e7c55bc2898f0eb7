"""Fixtures of the Parrot core tests: gateway services over named fake or tiny engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine.client import EngineClient
from gateway.core.config import CoreConfig
from gateway.services import Services, build_services
from gateway.settings import Settings

ServicesFactory = Callable[..., Any]


@pytest.fixture
def services() -> ServicesFactory:
    """`async with services(engines, **core_config) as s:` started gateway services."""

    @asynccontextmanager
    async def make(engines: Sequence[EngineClient], **config: Any) -> AsyncIterator[Services]:
        built = build_services(Settings(), engines, core_config=CoreConfig(**config))
        await built.start()
        try:
            yield built
        finally:
            await built.close()

    return make
