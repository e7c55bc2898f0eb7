"""Redis mode end to end: two gateway replicas over one Redis and two engine processes.

The replicas are two separate app instances (each its own uvicorn server, event loop,
pool and Redis connections; in threads of this process to keep the suite fast) and the
engines are real `parrot engine --echo` processes. Both replicas must send the same prefix
to the same engine (the prefix index lives in Redis), and killing an engine must give 503s
or reroutes, never a hang.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from gateway_support import Live, free_port, serve, settings_for_tests, spawn, wait_http

from gateway.app import create_app


@dataclass
class Cluster:
    gateways: list[str]
    engines: list[str]
    engine_procs: list[subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def cluster(redis_url: str) -> Iterator[Cluster]:
    ports = [free_port(), free_port()]
    engines = [f"http://127.0.0.1:{p}" for p in ports]
    procs = [spawn("engine", "--echo", "--port", str(p)) for p in ports]
    replicas: list[Live] = []
    try:
        for url, proc in zip(engines, procs, strict=True):
            wait_http(f"{url}/engine/health", proc)
        settings = settings_for_tests(
            echo=False,
            local_engine=False,
            engine_urls=tuple(engines),
            redis_url=redis_url,
            health_interval_s=0.3,
        )
        replicas = [serve(create_app(settings)) for _ in range(2)]
        yield Cluster([r.url for r in replicas], engines, procs)
    finally:
        for replica in replicas:
            replica.stop()
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def ask(gateway: str, content: str, timeout: float = 10.0) -> httpx.Response:
    body = {"model": "echo", "messages": [{"role": "user", "content": content}]}
    return httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=timeout)


def test_both_engines_serve_through_both_replicas(cluster: Cluster) -> None:
    for gateway in cluster.gateways:
        ready = httpx.get(f"{gateway}/ready").json()
        assert ready["engines_up"] == 2 and ready["state_store"] is True


def test_replicas_route_a_prefix_to_the_same_engine(cluster: Cluster) -> None:
    first, second = cluster.gateways
    used = set()
    for i in range(6):
        # Long enough for several 16-token blocks (EchoEngine tokenizes bytes).
        prompt = f"Document {i}: " + "the quick brown fox jumps over the lazy dog " * 4
        a = ask(first, prompt)
        assert a.status_code == 200
        engine = a.headers["x-parrot-engine"]
        # The second replica sees the first one's prefix index entry in Redis.
        for _ in range(3):
            b = ask(second, prompt + "and a different ending")
            assert b.status_code == 200
            assert b.headers["x-parrot-engine"] == engine
        used.add(engine)
    assert used <= set(cluster.engines)


def test_killing_an_engine_gives_503_or_reroutes(cluster: Cluster) -> None:
    prompt = "A prompt whose prefix lives on the engine that is about to die. " * 2
    engine = ask(cluster.gateways[0], prompt).headers["x-parrot-engine"]
    victim = cluster.engines.index(engine)
    cluster.engine_procs[victim].kill()
    cluster.engine_procs[victim].wait(timeout=10)
    statuses = []
    for _ in range(4):
        for gateway in cluster.gateways:
            response = ask(gateway, prompt, timeout=10.0)  # a hang fails the test here
            statuses.append(response.status_code)
            if response.status_code == 200:
                assert response.headers["x-parrot-engine"] != engine
            else:
                assert response.status_code == 503
                assert "retry-after" in response.headers
    assert statuses.count(200) >= len(statuses) - 2
    for gateway in cluster.gateways:
        assert ask(gateway, prompt).status_code == 200
