"""`Services`: the long-lived resources of one gateway app, built from settings, kept on
`app.state.services` and started/stopped by the app's lifespan."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from engine.client import EngineClient
from gateway.auth import ApiKeys
from gateway.core.config import CoreConfig
from gateway.core.service import ParrotCore
from gateway.engines import remote_connector
from gateway.errors import ApiError
from gateway.metrics import Metrics
from gateway.pool.members import EnginePool, HealthPolicy
from gateway.pool.router import PrefixIndexConfig, Router
from gateway.pool.routing import RoutingPolicy
from gateway.serving.dispatch import Dispatcher
from gateway.serving.logprobs import Detokenize, TokenTexts
from gateway.serving.prompts import PromptCache
from gateway.serving.runner import Runner
from gateway.settings import Settings
from gateway.state import StateStore, create_store


@dataclass(slots=True)
class Services:
    settings: Settings
    store: StateStore
    pool: EnginePool
    router: Router
    dispatcher: Dispatcher
    runner: Runner
    metrics: Metrics
    auth: ApiKeys
    local: Sequence[EngineClient]
    core: ParrotCore

    async def start(self) -> None:
        await self.store.start()
        for engine in self.local:
            # In-process engines load their model in start(); their info is known after it.
            await engine.start()
            self.pool.add(engine)
        for url in self.settings.engine_urls:
            self.pool.add_url(url)
        await self.pool.start()
        await self.core.start()

    async def close(self) -> None:
        await self.core.close()
        await self.pool.close()
        await self.router.drain()
        await self.store.close()

    async def admit(self, authorization: str | None) -> str:
        """The caller's tenant; 401 without a valid key, 429 over the rate limit."""
        tenant = self.auth.tenant(authorization)
        limit = self.settings.rate_limit_per_minute
        if limit is not None:
            minute = int(time.time() // 60)
            if await self.store.incr(f"rate:{tenant}:{minute}", 60.0) > limit:
                raise ApiError(
                    429,
                    f"Rate limit of {limit} requests per minute reached.",
                    type="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(60 - int(time.time()) % 60)},
                )
        return tenant

    def detokenizer(self, model: str) -> Detokenize:
        async def detokenize(token_ids: list[int]) -> str:
            return await self.dispatcher.detokenize(model, token_ids)

        return detokenize


def build_services(
    settings: Settings,
    engines: Sequence[EngineClient] = (),
    store: StateStore | None = None,
    core_config: CoreConfig | None = None,
) -> Services:
    store = store if store is not None else create_store(settings.redis_url)
    health = HealthPolicy(
        interval_s=settings.health_interval_s,
        timeout_s=settings.health_timeout_s,
        unhealthy_after=settings.unhealthy_after,
    )
    pool = EnginePool(store, remote_connector(settings), health)
    policy = RoutingPolicy(
        max_waiting=settings.route_max_waiting,
        max_imbalance=settings.route_max_imbalance,
        min_free_kv=settings.route_min_free_kv,
    )
    index = PrefixIndexConfig(max_blocks=settings.prefix_max_blocks, ttl_s=settings.prefix_ttl_s)
    router = Router(pool, store, policy, index, retry_after_s=settings.retry_after_s)
    prompts = PromptCache(settings.prompt_cache_size)
    dispatcher = Dispatcher(pool, router, prompts, retry_after_s=settings.retry_after_s)
    metrics = Metrics(pool)
    core_config = core_config or CoreConfig(session_idle_ttl_s=settings.session_idle_ttl_s)
    core = ParrotCore(core_config, store, pool, dispatcher)
    dispatcher.join = core.join_session  # OpenAI requests may join a session's contexts
    return Services(
        settings=settings,
        store=store,
        pool=pool,
        router=router,
        dispatcher=dispatcher,
        runner=Runner(metrics, TokenTexts()),
        metrics=metrics,
        auth=ApiKeys.from_settings(settings.api_keys, settings.keys_file),
        local=list(engines),
        core=core,
    )
