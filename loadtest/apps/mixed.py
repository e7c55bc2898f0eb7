"""Mixed workload: latency-sensitive chat at a fixed rate alongside a burst of map-reduce apps.

Chat goes through the plain OpenAI endpoint on every system (it is an ordinary chat
client); the map-reduce apps use the Parrot API on Parrot (awaiting their result with
throughput criteria) and client-side orchestration elsewhere. Reported: chat normalized
latency (s per output token) and the map-reduce apps' mean completion time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from dataclasses import dataclass, field

from loadtest.apps import map_reduce
from loadtest.apps.clients import OpenAIApi, ParrotApi
from loadtest.apps.text import query

CHAT_SYSTEM = "You are a friendly assistant. Answer briefly.\nUser: "


@dataclass(frozen=True)
class MixedParams:
    chat_rate: float = 1.0
    chat_requests: int = 20
    chat_output_tokens: int = 24
    apps: int = 4
    burst_at_s: float = 2.0
    map_reduce: map_reduce.MapReduceParams = field(
        default_factory=lambda: map_reduce.MapReduceParams(chunks=6, chunk_tokens=150)
    )
    seed: int = 4


async def _chat(chat: OpenAIApi, p: MixedParams) -> list[float]:
    rng = random.Random(p.seed)

    async def one(i: int, delay: float) -> float:
        await asyncio.sleep(delay)
        t = time.perf_counter()
        await chat.complete(
            CHAT_SYSTEM + query(p.seed * 31 + i) + "\nAssistant:", p.chat_output_tokens
        )
        return (time.perf_counter() - t) / p.chat_output_tokens

    delays, at = [], 0.0
    for _ in range(p.chat_requests):
        delays.append(at)
        at += rng.expovariate(p.chat_rate)
    return list(await asyncio.gather(*(one(i, d) for i, d in enumerate(delays))))


async def _burst(run_app, p: MixedParams) -> list[float]:
    await asyncio.sleep(p.burst_at_s)
    results = await asyncio.gather(*(run_app(i) for i in range(p.apps)))
    return [r["e2e_s"] for r in results]


def _app_params(p: MixedParams, i: int) -> map_reduce.MapReduceParams:
    """The i-th map-reduce app's document: its own, drawn from the run's seed."""
    return dataclasses.replace(p.map_reduce, seed=p.seed * 100 + i)


def _summary(chat: list[float], apps: list[float]) -> dict:
    return {
        "chat_s_per_token": statistics.mean(chat),
        "chat_p90_s_per_token": sorted(chat)[int(0.9 * (len(chat) - 1))],
        "map_reduce_s": statistics.mean(apps),
    }


async def run_parrot(api: ParrotApi, chat: OpenAIApi, p: MixedParams) -> dict:
    def app(i: int):
        return map_reduce.run_parrot(api, _app_params(p, i), criteria="throughput")

    chat_lat, apps = await asyncio.gather(_chat(chat, p), _burst(app, p))
    return _summary(chat_lat, apps)


async def run_baseline(api: OpenAIApi, p: MixedParams) -> dict:
    def app(i: int):
        return map_reduce.run_baseline(api, _app_params(p, i))

    chat_lat, apps = await asyncio.gather(_chat(api, p), _burst(app, p))
    return _summary(chat_lat, apps)
