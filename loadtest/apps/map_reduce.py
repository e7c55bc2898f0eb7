"""Map-reduce summary: summarise every chunk (the map stage), then one reduce over them all."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from loadtest.apps.clients import OpenAIApi, ParrotApi, Var, render
from loadtest.apps.text import document

MAP = (
    "You summarize one part of a long document.\n"
    "Part: {{input:part}}\n"
    "Summary of the part: {{output:summary}}"
)


def reduce_template(n: int) -> str:
    lines = "\n".join(f"- {{{{input:s{i}}}}}" for i in range(n))
    return (
        "You combine the summaries of a document's parts into one summary.\n"
        f"{lines}\nSummary of the whole document: {{{{output:final}}}}"
    )


@dataclass(frozen=True)
class MapReduceParams:
    chunks: int = 8
    chunk_tokens: int = 200
    output_tokens: int = 25
    seed: int = 1


async def run_parrot(api: ParrotApi, p: MapReduceParams, criteria: str = "latency") -> dict:
    parts = document(p.seed, p.chunks, p.chunk_tokens)
    t0 = time.perf_counter()
    sid = await api.session()
    maps = await asyncio.gather(
        *(api.submit(sid, MAP, {"part": part}, {"summary": p.output_tokens}) for part in parts)
    )
    inputs = {f"s{i}": Var(m["summary"]) for i, m in enumerate(maps)}
    final = await api.submit(sid, reduce_template(p.chunks), inputs, {"final": p.output_tokens})
    await api.get(sid, final["final"], criteria)
    e2e = time.perf_counter() - t0
    await api.end(sid)
    return {"e2e_s": e2e}


async def run_baseline(api: OpenAIApi, p: MapReduceParams) -> dict:
    parts = document(p.seed, p.chunks, p.chunk_tokens)
    t0 = time.perf_counter()
    summaries = await asyncio.gather(
        *(api.complete(render(MAP, {"part": part}), p.output_tokens) for part in parts)
    )
    values = {f"s{i}": s for i, s in enumerate(summaries)}
    await api.complete(render(reduce_template(p.chunks), values), p.output_tokens)
    return {"e2e_s": time.perf_counter() - t0}
