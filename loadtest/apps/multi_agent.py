"""Multi-agent programming (MetaGPT-like): architect -> N programmers -> N reviewers -> N
revisers. Every role's prompt starts with the same long project brief, and the later roles
all read the architect's design."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from loadtest.apps.clients import OpenAIApi, ParrotApi, render
from loadtest.apps.text import system_prompt

BRIEF_TOKENS = 400


def brief(seed: int) -> str:
    return system_prompt(seed, BRIEF_TOKENS, "a member of a software team building a game")


def templates(seed: int) -> dict[str, str]:
    b = brief(seed)
    return {
        "architect": b + "\nRole: architect.\nTask: {{input:task}}\nDesign: {{output:design}}",
        "programmer": b + "\nRole: programmer.\nDesign: {{input:design}}\n"
        "Write the file {{input:file}}.\nCode: {{output:code}}",
        "reviewer": b + "\nRole: reviewer.\nDesign: {{input:design}}\nFile {{input:file}}:\n"
        "{{input:code}}\nReview: {{output:review}}",
        "reviser": b + "\nRole: reviser.\nDesign: {{input:design}}\nFile {{input:file}}:\n"
        "{{input:code}}\nReview: {{input:review}}\nRevised code: {{output:final}}",
    }


@dataclass(frozen=True)
class MultiAgentParams:
    files: int = 4
    output_tokens: int = 48
    seed: int = 3


TASK = "a snake game with a score board and levels"


async def run_parrot(api: ParrotApi, p: MultiAgentParams) -> dict:
    t = templates(p.seed)
    n, out = p.files, p.output_tokens
    files = [f"module_{i}.py" for i in range(n)]
    t0 = time.perf_counter()
    sid = await api.session()
    # One graph: calls refer to earlier calls' outputs as "<index>.<output>".
    calls = [_call(api, t["architect"], {"task": {"value": TASK}}, "design", out)]
    for f in files:
        calls.append(
            _call(
                api,
                t["programmer"],
                {"design": {"ref": "0.design"}, "file": {"value": f}},
                "code",
                out,
            )
        )
    for i, f in enumerate(files):
        calls.append(
            _call(
                api,
                t["reviewer"],
                {
                    "design": {"ref": "0.design"},
                    "file": {"value": f},
                    "code": {"ref": f"{1 + i}.code"},
                },
                "review",
                out,
            )
        )
    for i, f in enumerate(files):
        calls.append(
            _call(
                api,
                t["reviser"],
                {
                    "design": {"ref": "0.design"},
                    "file": {"value": f},
                    "code": {"ref": f"{1 + i}.code"},
                    "review": {"ref": f"{1 + n + i}.review"},
                },
                "final",
                out,
            )
        )
    created = await api._request("POST", f"/sessions/{sid}/graph", json={"calls": calls})
    finals = [c["outputs"]["final"] for c in created["calls"][1 + 2 * n :]]
    await asyncio.gather(*(api.get(sid, v, "latency") for v in finals))
    e2e = time.perf_counter() - t0
    await api.end(sid)
    return {"e2e_s": e2e}


def _call(api: ParrotApi, template: str, inputs: dict, output: str, n: int) -> dict:
    return {
        "model": api.model,
        "template": template,
        "inputs": inputs,
        "outputs": {output: {"max_tokens": n, "temperature": 0.0, "ignore_eos": True}},
    }


async def run_baseline(api: OpenAIApi, p: MultiAgentParams) -> dict:
    t = templates(p.seed)
    out = p.output_tokens
    files = [f"module_{i}.py" for i in range(p.files)]
    t0 = time.perf_counter()
    design = await api.complete(render(t["architect"], {"task": TASK}), out)
    codes = await asyncio.gather(
        *(api.complete(render(t["programmer"], {"design": design, "file": f}), out) for f in files)
    )
    reviews = await asyncio.gather(
        *(
            api.complete(render(t["reviewer"], {"design": design, "file": f, "code": c}), out)
            for f, c in zip(files, codes, strict=True)
        )
    )
    await asyncio.gather(
        *(
            api.complete(
                render(t["reviser"], {"design": design, "file": f, "code": c, "review": r}), out
            )
            for f, c, r in zip(files, codes, reviews, strict=True)
        )
    )
    return {"e2e_s": time.perf_counter() - t0}
