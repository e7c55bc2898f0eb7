"""Shared system prompts: many users' queries behind a few long system prompts.

`burst` is the Bing-Copilot-like case (a batch of users at once behind one long prompt);
`rates` is the GPTs-like case (four apps with prompts of different lengths, 1:1:1:1,
Poisson arrivals at rising rates), reporting normalized latency (seconds per output token)
and the sustainable rate: the highest rate, going up, below the first that misses a bound.

Each rate sends arrivals for `window_s` seconds (at least `min_requests`), so a rate the
system cannot keep up with builds a queue over the window, as a sustained load does; a fixed
request count would turn the high rates into short bursts that any system drains. Rates
above the first miss are not run (they would only take longer to miss); instead `refine`
geometric midpoints between the last rate held and the first missed narrow the answer.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass

from loadtest.apps.clients import OpenAIApi, ParrotApi, render
from loadtest.apps.text import query, system_prompt

ROLES = ("a travel planner", "a cooking assistant", "a coding tutor", "a fitness coach")


def template(app: int, prompt_tokens: int, seed: int) -> str:
    system = system_prompt(seed * 10 + app, prompt_tokens, ROLES[app % len(ROLES)])
    return system + "\nUser: {{input:question}}\nAssistant: {{output:answer}}"


@dataclass(frozen=True)
class SharedPromptParams:
    users: int = 16
    prompt_tokens: int = 700
    app_prompt_tokens: tuple[int, ...] = (300, 500, 700, 900)
    output_tokens: int = 32
    rates: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    window_s: float = 20.0
    min_requests: int = 8
    refine: int = 1  # geometric midpoints tried between the last rate held and the first missed
    bound_s_per_token: float = 0.25
    seed: int = 2


class _ParrotUser:
    """One session per app, reused by every user of that app (the prefix is shared anyway)."""

    def __init__(self, api: ParrotApi):
        self.api = api
        self.sessions: dict[int, str] = {}

    async def ask(self, app: int, tmpl: str, question: str, out: int) -> None:
        if app not in self.sessions:
            self.sessions[app] = await self.api.session()
        sid = self.sessions[app]
        vid = (await self.api.submit(sid, tmpl, {"question": question}, {"answer": out}))["answer"]
        await self.api.get(sid, vid, "latency")

    async def close(self) -> None:
        for sid in self.sessions.values():
            await self.api.end(sid)


async def _burst(ask, p: SharedPromptParams) -> dict:
    tmpl = template(0, p.prompt_tokens, p.seed)

    async def one(i: int) -> float:
        t = time.perf_counter()
        await ask(0, tmpl, query(p.seed * 1000 + i), p.output_tokens)
        return time.perf_counter() - t

    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(one(i) for i in range(p.users)))
    return {"e2e_s": time.perf_counter() - t0, "mean_latency_s": statistics.mean(latencies)}


def requests_at(p: SharedPromptParams, rate: float) -> int:
    return max(p.min_requests, round(rate * p.window_s))


async def _rates(ask, p: SharedPromptParams) -> dict:
    templates = [template(a, n, p.seed) for a, n in enumerate(p.app_prompt_tokens)]
    results: dict[str, float] = {}
    asked = 0

    async def at_rate(rate: float) -> bool:
        """Runs one rate's arrivals; True if their mean normalized latency kept the bound."""
        nonlocal asked
        rng = random.Random(p.seed + int(rate * 1000))

        async def one(i: int, delay: float, rng_seed: int) -> float:
            await asyncio.sleep(delay)
            app = i % len(templates)
            t = time.perf_counter()
            await ask(app, templates[app], query(rng_seed), p.output_tokens)
            return (time.perf_counter() - t) / p.output_tokens

        n = requests_at(p, rate)
        delays, at = [], 0.0
        for _ in range(n):
            delays.append(at)
            at += rng.expovariate(rate)
        # Every rate asks new questions: a repeated one would be served from prefix caches.
        first = p.seed * 7919 + asked
        asked += n
        norm = await asyncio.gather(*(one(i, d, first + i) for i, d in enumerate(delays)))
        results[str(rate)] = statistics.mean(norm)
        return results[str(rate)] <= p.bound_s_per_token

    held, missed = 0.0, None
    for rate in p.rates:
        if not await at_rate(rate):
            missed = rate
            break
        held = rate
    # Narrow the step between the last rate held and the first missed (geometric midpoints).
    for _ in range(p.refine if held and missed else 0):
        mid = round((held * missed) ** 0.5, 2)
        if await at_rate(mid):
            held = mid
        else:
            missed = mid
    return {
        "normalized_latency": dict(sorted(results.items(), key=lambda kv: float(kv[0]))),
        "sustainable_rate": held,
        "first_missed_rate": missed,  # None: the sweep's top rate was held, so it is a floor
        "bound_s_per_token": p.bound_s_per_token,
        "app_prompt_tokens": list(p.app_prompt_tokens),
        "requests": {r: requests_at(p, float(r)) for r in results},
        "not_run": [r for r in p.rates if str(r) not in results],
    }


async def run_parrot(api: ParrotApi, p: SharedPromptParams, mode: str = "burst") -> dict:
    user = _ParrotUser(api)
    try:
        return await (_burst if mode == "burst" else _rates)(user.ask, p)
    finally:
        await user.close()


async def run_baseline(api: OpenAIApi, p: SharedPromptParams, mode: str = "burst") -> dict:
    async def ask(app: int, tmpl: str, question: str, out: int) -> None:
        await api.complete(render(tmpl, {"question": question}), out)

    return await (_burst if mode == "burst" else _rates)(ask, p)
