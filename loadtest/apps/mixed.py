"""Mixed workload: latency-sensitive chat at a fixed rate alongside a burst of map-reduce apps.

Chat goes through the plain OpenAI endpoint on every system (it is an ordinary chat
client); the map-reduce apps use the Parrot API on Parrot (awaiting their result with
throughput criteria) and client-side orchestration elsewhere. Reported: chat normalized
latency (s per output token) and the map-reduce apps' mean completion time.

Chats arrive evenly, one every 1 / chat_rate seconds, not as a Poisson stream: with a dozen
chats a run's random schedule decided the result (one run's draws sent 11 of 12 chats 8.5 s
or more in, when the burst, 2 s in and 4-7 s long, was mostly over), and every run draws
its own seed, so two runs of the case, at two round-trip times for instance, did not
overlap chat and burst alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
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


def chat_arrivals(p: MixedParams) -> list[float]:
    """When each chat is sent, seconds after the start: evenly at the chat rate."""
    return [i / p.chat_rate for i in range(p.chat_requests)]


async def _chat(chat: OpenAIApi, p: MixedParams) -> list[float]:
    async def one(i: int, delay: float) -> float:
        await asyncio.sleep(delay)
        t = time.perf_counter()
        await chat.complete(
            CHAT_SYSTEM + query(p.seed * 31 + i) + "\nAssistant:", p.chat_output_tokens
        )
        return (time.perf_counter() - t) / p.chat_output_tokens

    delays = chat_arrivals(p)
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
