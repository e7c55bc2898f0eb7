"""Prometheus metrics of one gateway app, in its own registry (not prometheus_client's global).

Request metrics are observed as requests finish; engine metrics (up, queues, KV usage,
prefix hit rate) are read from the pool's latest health-check stats at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.pool.members import EnginePool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _EngineCollector(Collector):
    def __init__(self, pool: EnginePool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        families = {
            "up": GaugeMetricFamily(
                "parrot_engine_up", "1 if the engine passes health checks", labels=["engine"]
            ),
            "running": GaugeMetricFamily(
                "parrot_engine_running_requests",
                "Requests running on the engine",
                labels=["engine"],
            ),
            "waiting": GaugeMetricFamily(
                "parrot_engine_waiting_requests", "Requests queued on the engine", labels=["engine"]
            ),
            "inflight": GaugeMetricFamily(
                "parrot_engine_gateway_inflight_requests",
                "This gateway's requests on the engine",
                labels=["engine"],
            ),
            "kv": GaugeMetricFamily(
                "parrot_engine_kv_usage_ratio",
                "Fraction of KV cache blocks in use",
                labels=["engine"],
            ),
            "blocks": GaugeMetricFamily(
                "parrot_engine_kv_blocks_used",
                "KV cache blocks in use (cached reusable blocks count as free)",
                labels=["engine"],
            ),
            "total": GaugeMetricFamily(
                "parrot_engine_kv_blocks_total", "KV cache blocks in all", labels=["engine"]
            ),
            "hit": GaugeMetricFamily(
                "parrot_engine_prefix_hit_rate",
                "Prompt tokens served from cached prefixes / prompt tokens",
                labels=["engine"],
            ),
        }
        for member in self._pool.members:
            engine = [member.member_id]
            families["up"].add_metric(engine, 1.0 if member.healthy else 0.0)
            families["inflight"].add_metric(engine, member.inflight)
            stats = member.stats
            if stats is None:
                continue
            families["running"].add_metric(engine, stats.num_running)
            families["waiting"].add_metric(engine, stats.num_waiting)
            if stats.total_blocks:
                families["kv"].add_metric(engine, stats.used_blocks / stats.total_blocks)
                families["blocks"].add_metric(engine, stats.used_blocks)
                families["total"].add_metric(engine, stats.total_blocks)
            if stats.prefix_query_tokens:
                families["hit"].add_metric(
                    engine, stats.prefix_hit_tokens / stats.prefix_query_tokens
                )
        yield from families.values()


class Metrics:
    def __init__(self, pool: EnginePool) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "parrot_requests",
            "API requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "parrot_prompt_tokens", "Prompt tokens", ["model"], registry=registry
        )
        self.cached_tokens = Counter(
            "parrot_cached_prompt_tokens",
            "Prompt tokens served from cached KV",
            ["model"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "parrot_completion_tokens", "Generated tokens", ["model"], registry=registry
        )
        self.ttft = Histogram(
            "parrot_time_to_first_token_seconds",
            "Time to the first generated token",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "parrot_request_latency_seconds",
            "Time to the last byte of the response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "parrot_requests_in_flight",
            "Engine requests (choices) this gateway is waiting on: its queue depth",
            registry=registry,
        )
        self.inflight.set_function(lambda: sum(m.inflight for m in pool.members))
        registry.register(_EngineCollector(pool))
        self._bound: dict[tuple[str, str], tuple[Any, ...]] = {}

    def _children(self, route: str, model: str) -> tuple[Any, ...]:
        # labels() takes a lock and builds a key each call: bind once per (route, model).
        key = (route, model)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = (
                self.requests.labels(route, "200"),
                self.prompt_tokens.labels(model),
                self.completion_tokens.labels(model),
                self.cached_tokens.labels(model),
                self.ttft.labels(route),
                self.latency.labels(route),
            )
        return bound

    def finished(
        self,
        route: str,
        model: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        ttft_s: float | None,
        latency_s: float,
    ) -> None:
        requests, prompt, completion, cached, ttft, latency = self._children(route, model)
        requests.inc()
        prompt.inc(prompt_tokens)
        completion.inc(completion_tokens)
        if cached_tokens:
            cached.inc(cached_tokens)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        latency.observe(latency_s)

    def failed(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
