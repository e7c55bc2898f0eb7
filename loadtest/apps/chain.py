"""Chain summary: each step refines the running summary with the next chunk of a document."""

from __future__ import annotations

import time
from dataclasses import dataclass

from loadtest.apps.clients import OpenAIApi, ParrotApi, Var, render
from loadtest.apps.text import document

TEMPLATE = (
    "You summarize long documents one part at a time.\n"
    "Summary so far: {{input:prev}}\n"
    "Next part: {{input:part}}\n"
    "Updated summary: {{output:summary}}"
)
FIRST = "(nothing yet)"


@dataclass(frozen=True)
class ChainParams:
    chunks: int = 6
    chunk_tokens: int = 200
    output_tokens: int = 25
    seed: int = 0


async def run_parrot(api: ParrotApi, p: ChainParams) -> dict:
    parts = document(p.seed, p.chunks, p.chunk_tokens)
    t0 = time.perf_counter()
    sid = await api.session()
    prev: str | Var = FIRST
    for part in parts:  # submissions return at once; the server runs the chain itself
        out = await api.submit(
            sid, TEMPLATE, {"prev": prev, "part": part}, {"summary": p.output_tokens}
        )
        prev = Var(out["summary"])
    await api.get(sid, prev.vid, "latency")
    e2e = time.perf_counter() - t0
    await api.end(sid)
    return {"e2e_s": e2e}


async def run_baseline(api: OpenAIApi, p: ChainParams) -> dict:
    parts = document(p.seed, p.chunks, p.chunk_tokens)
    t0 = time.perf_counter()
    prev = FIRST
    for part in parts:
        prev = await api.complete(render(TEMPLATE, {"prev": prev, "part": part}), p.output_tokens)
    return {"e2e_s": time.perf_counter() - t0}
