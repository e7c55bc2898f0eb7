"""HTTP clients the workloads drive: Parrot's semantic-variable API and a plain OpenAI client.

Both inject the same client-to-service round-trip time before every HTTP request, since a
remote service pays it on every call; a client that orchestrates dependent calls itself
pays it once per call, Parrot once per submission and once per awaited result.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import httpx

PLACEHOLDER = re.compile(r"\{\{(input|output):([A-Za-z_][A-Za-z0-9_]*)\}\}")


# Idle connections expire before servers with uvicorn's 5 s default drop them: reusing one
# the server has just closed fails the request.
LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=512, keepalive_expiry=2.0)


@dataclass(frozen=True, slots=True)
class Var:
    """A semantic variable already in the session (an earlier call's output)."""

    vid: str


def render(template: str, values: dict[str, str]) -> str:
    """The prompt a client-side orchestrator sends: inputs substituted, cut at the output."""
    out = []
    pos = 0
    for m in PLACEHOLDER.finditer(template):
        out.append(template[pos : m.start()])
        if m.group(1) == "output":
            return "".join(out)
        out.append(values[m.group(2)])
        pos = m.end()
    out.append(template[pos:])
    return "".join(out)


@dataclass
class Counters:
    requests: int = 0
    completion_tokens: int = 0


@dataclass
class ParrotApi:
    base_url: str  # ends with /v1
    model: str
    rtt_s: float = 0.0
    api_key: str = "none"
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=httpx.Timeout(600.0),
            limits=LIMITS,
        )

    async def _request(self, method: str, path: str, **kw) -> dict:
        if self.rtt_s:
            await asyncio.sleep(self.rtt_s)
        self.counters.requests += 1
        r = await self._http.request(method, path, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else {}

    async def session(self) -> str:
        return (await self._request("POST", "/sessions", json={}))["id"]

    async def end(self, sid: str) -> None:
        await self._request("DELETE", f"/sessions/{sid}")

    async def submit(
        self,
        sid: str,
        template: str,
        inputs: dict[str, str | Var],
        outputs: dict[str, int],
        criteria: str | None = None,
    ) -> dict[str, str]:
        body: dict = {
            "model": self.model,
            "template": template,
            "inputs": {
                k: {"var": v.vid} if isinstance(v, Var) else {"value": v} for k, v in inputs.items()
            },
            "outputs": {
                k: {"max_tokens": n, "temperature": 0.0, "ignore_eos": True}
                for k, n in outputs.items()
            },
        }
        if criteria:
            body["criteria"] = criteria
        return (await self._request("POST", f"/sessions/{sid}/calls", json=body))["outputs"]

    async def get(self, sid: str, vid: str, criteria: str = "latency") -> str:
        while True:
            got = await self._request(
                "GET",
                f"/sessions/{sid}/variables/{vid}",
                params={"criteria": criteria, "timeout": 300},
            )
            if got.get("status") == "failed":
                raise RuntimeError(f"variable {vid} failed: {got}")
            if got.get("ready"):
                return got["value"]

    async def close(self) -> None:
        await self._http.aclose()


@dataclass
class OpenAIApi:
    """Plain completions through the OpenAI SDK, the way a LangChain-style app drives a server."""

    base_url: str
    model: str
    rtt_s: float = 0.0
    api_key: str = "none"
    counters: Counters = field(default_factory=Counters)
    # Parrot's `parrot.objective` extension on every request (None: plain OpenAI requests).
    objective: str | None = None

    def __post_init__(self) -> None:
        from openai import AsyncOpenAI

        self._client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            max_retries=0,
            timeout=600.0,
            http_client=httpx.AsyncClient(
                limits=LIMITS,
                timeout=600.0,
            ),
        )

    async def complete(self, prompt: str, max_tokens: int) -> str:
        if self.rtt_s:
            await asyncio.sleep(self.rtt_s)
        self.counters.requests += 1
        extra: dict = {"ignore_eos": True}
        if self.objective:
            extra["parrot"] = {"objective": self.objective}
        r = await self._client.completions.create(
            model=self.model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0,
            extra_body=extra,
        )
        self.counters.completion_tokens += r.usage.completion_tokens if r.usage else 0
        return r.choices[0].text

    async def close(self) -> None:
        await self._client.close()
