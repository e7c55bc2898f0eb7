"""Locust users for Parrot: streaming OpenAI chat, and semantic-variable map-reduce apps.

Run it through `parrot loadtest` (headless, with server probes and a summary), or by hand:

    python -m locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 [--model M]

Besides locust's per-route entries, chat users report "chat TTFT" (request sent -> first
content token), "chat ITL" (one sample per gap between content chunks) and "chat e2e";
app users report "app e2e" (session created -> reduce output read -> session deleted).
These synthetic entries have request type "SSE"/"APP", so the real HTTP requests are the
entries whose type is an HTTP method.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment

TOPICS = (
    "the history of lighthouses",
    "how bees find flowers",
    "why the sky is blue",
    "the rules of chess",
    "how bread rises",
    "the water cycle",
    "a trip to the mountains",
    "the first railways",
)
PASSAGES = (
    "The river rose after three days of rain and the old mill wheel turned faster than "
    "anyone in the village could remember.",
    "Sailors once steered by the stars, reading the height of the pole star to know how far "
    "north they had come.",
    "A good loaf needs time: the yeast feeds on the flour and fills the dough with small "
    "bubbles of gas.",
    "The library kept its oldest maps in a cold room, where the paper would not yellow and "
    "the ink would not fade.",
    "Every spring the swallows came back to the same barn, as if they carried a map of the "
    "whole valley in their heads.",
)
MAP = (
    "Summarize this passage in one sentence.\nPassage: {{input:text}}\nSummary: {{output:summary}}"
)
REDUCE = (
    "Combine the two summaries into one sentence.\nFirst: {{input:a}}\nSecond: {{input:b}}\n"
    "Combined: {{output:combined}}"
)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--model", default="", help="model id (default: the first /v1/models)")
    parser.add_argument("--max-tokens", type=int, default=12, help="output tokens per call")
    parser.add_argument("--api-key", default="", help="bearer key, if the gateway needs one")
    parser.add_argument("--report-json", default="", help="write the final stats here on quit")


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    # `quit` carries only the exit code; the closure supplies the environment.
    path = environment.parsed_options.report_json
    if path:
        environment.events.quit.add_listener(lambda **_: _write_report(environment, path))


def _write_report(environment: Environment, path: str) -> None:
    """The final stats as JSON (locust's CSVs are rewritten on a timer and may lag)."""
    stats = environment.stats
    entries = [
        {
            "type": e.method,
            "name": e.name,
            "requests": e.num_requests,
            "failures": e.num_failures,
            "p50_ms": e.get_response_time_percentile(0.5) if e.num_requests else None,
            "p99_ms": e.get_response_time_percentile(0.99) if e.num_requests else None,
            "avg_ms": round(e.avg_response_time, 1),
            "max_ms": round(e.max_response_time, 1),
        }
        for e in stats.entries.values()
    ]
    failures = [
        {"entry": f"{e.method} {e.name}", "error": str(e.error), "count": e.occurrences}
        for e in stats.errors.values()
    ]
    exceptions = [
        {"error": x["msg"], "count": x["count"]} for x in environment.runner.exceptions.values()
    ]
    report = {"entries": entries, "failures": failures, "exceptions": exceptions}
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def _fire(env: Environment, kind: str, name: str, ms: float) -> None:
    """Record a measured span as its own locust entry (a success: failures are on the HTTP one)."""
    env.events.request.fire(
        request_type=kind,
        name=name,
        response_time=ms,
        response_length=0,
        exception=None,
        context={},
    )


def _read_stream(response: Any, arrivals: list[float]) -> tuple[bool, str | None]:
    """Consume an SSE body, noting when each content chunk arrived: (saw [DONE], error)."""
    for line in response.iter_lines(chunk_size=None, decode_unicode=True):
        if not line or not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            return True, None
        chunk = json.loads(data)
        if "error" in chunk:
            return False, f"stream error: {chunk['error'].get('message')}"
        if any(c["delta"].get("content") for c in chunk.get("choices", ())):
            arrivals.append(time.perf_counter())
    return False, None


class ParrotUser(HttpUser):
    """Shared setup: auth header, model id and output length from the command line."""

    abstract = True
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"
        self.max_tokens = options.max_tokens
        self.model = options.model or self.client.get("/v1/models").json()["data"][0]["id"]


class ChatUser(ParrotUser):
    """An OpenAI chat client streaming short answers over plain HTTP SSE."""

    @task
    def chat(self) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Tell me about {random.choice(TOPICS)}."}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
        }
        start = time.perf_counter()
        arrivals: list[float] = []
        with self.client.post(
            "/v1/chat/completions", json=body, stream=True, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            try:
                done, error = _read_stream(response, arrivals)
            except Exception as exc:  # a broken stream is a failed request, not a crashed user
                done, error = False, f"{type(exc).__name__}: {exc}"
            if error is None and not done:
                error = "stream ended without [DONE]"
            if error is None and not arrivals:
                error = "stream had no content"
            if error is not None:
                response.failure(error)
                return
            response.success()
        env = self.environment
        _fire(env, "SSE", "chat TTFT", (arrivals[0] - start) * 1000)
        for prev, now in itertools.pairwise(arrivals):
            _fire(env, "SSE", "chat ITL", (now - prev) * 1000)
        _fire(env, "SSE", "chat e2e", (arrivals[-1] - start) * 1000)


class AppUser(ParrotUser):
    """A semantic-variable application: two map calls and a reduce, submitted as one graph."""

    sid: str | None = None

    def _json(self, method: str, path: str, name: str, **kw: Any) -> dict | None:
        with self.client.request(method, path, name=name, catch_response=True, **kw) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return None
            return r.json()

    def _output(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": 0.0, "ignore_eos": True}

    @task
    def map_reduce(self) -> None:
        start = time.perf_counter()
        session = self._json("POST", "/v1/sessions", "/v1/sessions", json={})
        if session is None:
            return
        self.sid = sid = session["id"]
        a, b = random.sample(PASSAGES, 2)
        maps = [
            {
                "model": self.model,
                "template": MAP,
                "inputs": {"text": {"value": text}},
                "outputs": {"summary": self._output()},
            }
            for text in (a, b)
        ]
        reduce = {
            "model": self.model,
            "template": REDUCE,
            "inputs": {"a": {"ref": "0.summary"}, "b": {"ref": "1.summary"}},
            "outputs": {"combined": self._output()},
        }
        graph = self._json(
            "POST",
            f"/v1/sessions/{sid}/graph",
            "/v1/sessions/[sid]/graph",
            json={"calls": [*maps, reduce]},
        )
        value = None
        if graph is not None:
            value = self._wait(sid, graph["calls"][2]["outputs"]["combined"])
        self._delete()
        if value is not None:
            _fire(self.environment, "APP", "app e2e", (time.perf_counter() - start) * 1000)

    def _wait(self, sid: str, vid: str) -> str | None:
        # A GET answers "pending" at its timeout; ask again rather than count it as an error.
        while True:
            got = self._json(
                "GET",
                f"/v1/sessions/{sid}/variables/{vid}",
                "/v1/sessions/[sid]/variables/[vid]",
                params={"criteria": "latency", "timeout": 60},
            )
            if got is None or got.get("ready"):
                return None if got is None else got["value"]

    def _delete(self) -> None:
        if self.sid is not None:
            sid, self.sid = self.sid, None
            self._json("DELETE", f"/v1/sessions/{sid}", "/v1/sessions/[sid]")

    def on_stop(self) -> None:
        # A user stopped mid-task still frees its session, so KV is released after the load.
        self._delete()
