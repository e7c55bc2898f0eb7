"""The simulated engine: cost model, KV and prefix-cache accounting, forks, the virtual
clock, the calibration fit and the cluster driver with every router."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import OutOfBlocks, RequestAborted
from engine.protocol import FillRequest, GenerateRequest, SamplingParams
from engine.sim.calibrate import Measurements, fit
from engine.sim.clock import VirtualClockDeadlock, run_virtual
from engine.sim.driver import Driver
from engine.sim.engine import SimEngine
from engine.sim.profile import CostProfile, load_profile, preset_names
from engine.sim.routers import LeastLoaded, PrefixAffine, RoundRobin
from engine.sim.workload import WORKLOADS, poisson_apps

ROOT = Path(__file__).resolve().parents[2]
PROFILE = CostProfile(
    name="test",
    model="sim",
    source="unit test",
    rows=(1, 100),
    rows_s=(0.010, 0.109),  # 10 ms + 1 ms per extra row
    decode_attn_s_per_pair=1e-6,
    prefill_attn_s_per_pair=1e-7,
    num_blocks=64,
    max_step_tokens=100,
)


def test_profile_interpolates_and_round_trips() -> None:
    assert PROFILE.rows_cost(1) == pytest.approx(0.010)
    assert PROFILE.rows_cost(50) == pytest.approx(0.059)
    assert PROFILE.rows_cost(200) == pytest.approx(0.209)  # extrapolated
    assert PROFILE.step_s(4, decode_pairs=400, prefill_pairs=0) == pytest.approx(0.0134)
    assert CostProfile.from_json(PROFILE.to_json()) == PROFILE
    assert {"a100-llama2-7b", "a100-llama2-13b", "cpu-smollm2"} <= set(preset_names())
    a100 = load_profile("a100-llama2-7b")
    assert 0.009 < a100.step_s(1, 1000, 0) < 0.013  # ~11 ms per token at batch 1, as measured
    with pytest.raises(FileNotFoundError):
        load_profile("no-such-profile")


def _request(rid: str, tokens: list[int], n: int, parent: str | None = None) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid,
        context_id=rid,
        parent_context_id=parent,
        prompt_token_ids=tokens,
        sampling=SamplingParams(max_tokens=n, ignore_eos=True),
        free_on_finish=True,
    )


async def _timed(engine: SimEngine, request: GenerateRequest) -> tuple[float, list]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunks = [c async for c in engine.generate(request)]
    return loop.time() - start, chunks


def test_single_request_time_follows_the_cost_model() -> None:
    async def main():
        engine = SimEngine(PROFILE)
        await engine.start()
        elapsed, chunks = await _timed(engine, _request("r", list(range(300, 350)), 5))
        await engine.close()
        return elapsed, chunks

    wall = time.perf_counter()
    elapsed, chunks = run_virtual(main())
    assert time.perf_counter() - wall < 2.0
    prefill = PROFILE.step_s(50, 0, 50 * 51 // 2)  # the prompt, sampling the first token
    decodes = sum(PROFILE.step_s(1, 50 + i, 0) for i in range(1, 5))
    assert elapsed == pytest.approx(prefill + decodes)
    assert len(chunks) == 5 and chunks[-1].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.prompt_tokens == 50


def test_forks_share_blocks_and_the_prefix_cache_hits() -> None:
    async def main():
        engine = SimEngine(PROFILE)
        await engine.start()
        prefix = list(range(1000, 1064))  # 4 full blocks
        filled = await engine.fill(FillRequest(context_id="px", token_ids=prefix))
        used = (await engine.stats()).used_blocks
        _, forked = await _timed(engine, _request("c1", [7, 8], 3, parent="px"))
        children = engine.core.contexts.get("px").num_children
        # An unrelated request repeating the prefix finds its blocks by hash.
        _, repeated = await _timed(engine, _request("c2", [*prefix, 9], 2))
        await engine.free("px")
        stats = await engine.stats()
        await engine.close()
        return filled, used, forked, repeated, stats, children

    filled, used, forked, repeated, stats, children = run_virtual(main())
    assert children == 0  # the fork was freed when it finished
    assert filled.num_tokens == 64 and filled.cached_tokens == 0 and used == 4
    assert forked[-1].usage.cached_tokens == 64  # the child started from the parent's KV
    assert repeated[-1].usage.cached_tokens == 64
    assert stats.num_contexts == 0 and stats.used_blocks == 0 and stats.cached_blocks >= 4


def test_oversized_requests_and_aborts() -> None:
    async def main():
        engine = SimEngine(PROFILE)
        await engine.start()
        with pytest.raises(OutOfBlocks):
            await _timed(engine, _request("big", list(range(300, 1400)), 10))
        stream = engine.generate(_request("long", [1, 2, 3], 500))
        await anext(stream)
        await engine.abort("long")
        with pytest.raises(RequestAborted):
            async for _ in stream:
                pass
        stats = await engine.stats()
        await engine.close()
        return stats

    assert run_virtual(main()).num_contexts == 0


def test_virtual_clock_detects_deadlock() -> None:
    async def stuck():
        await asyncio.get_running_loop().create_future()

    with pytest.raises(VirtualClockDeadlock):
        run_virtual(stuck())


def test_fit_recovers_the_coefficients() -> None:
    truth = CostProfile(
        name="t",
        model="m",
        source="s",
        rows=(1, 8, 64, 512),
        rows_s=(0.02, 0.022, 0.05, 0.3),
        decode_attn_s_per_pair=2e-6,
        prefill_attn_s_per_pair=5e-8,
    )
    steps = 10
    m = Measurements(decode_steps=steps)
    for batch in (1, 8, 64):
        for length in (40, 1000):
            m.decode_s[(batch, length)] = truth.step_s(batch, batch * (length + steps // 2), 0)
    m.prefill_s[512] = truth.step_s(512, 0, 512 * 513 // 2)
    m.offset_prefill_s[(512, 1024)] = truth.step_s(512, 0, 512 * 1024 + 512 * 513 // 2)
    got = fit(m, name="t", model="m", source="s")
    assert got.decode_attn_s_per_pair == pytest.approx(2e-6)
    assert got.prefill_attn_s_per_pair == pytest.approx(5e-8)
    for rows in (1, 8, 64, 512):
        assert got.rows_cost(rows) == pytest.approx(truth.rows_cost(rows), rel=1e-3)


@pytest.mark.parametrize("kind", list(WORKLOADS))
def test_driver_runs_every_workload_on_every_baseline(kind: str) -> None:
    apps = poisson_apps(kind, n_apps=3, rate=2.0, seed=1, scale=0.05)
    a100 = load_profile("a100-llama2-7b")
    for router in (RoundRobin(2), LeastLoaded(2), PrefixAffine(2)):

        async def main(router=router):
            pool = [SimEngine(a100, f"sim-{i}") for i in range(2)]
            for engine in pool:
                await engine.start()
            return await Driver(pool, router, client_rtt_s=0.25).run(apps)

        results = run_virtual(main())
        assert len(results) == 3 and not any(r.failed for r in results)
        calls = sum(len(a.calls) for a in apps)
        assert sum(len(r.calls) for r in results) == calls
        # Every call after the first of its chain waited one client round trip.
        assert all(r.latency_s >= 0.25 for r in results)


def test_an_apps_siblings_fork_one_session_prefix_freed_with_the_app() -> None:
    from gateway.core.config import CoreConfig
    from loadtest.bench_cluster import ParrotRouter, deduce

    a100 = load_profile("a100-llama2-7b")
    apps = poisson_apps("multi_agent", n_apps=2, rate=1.0, seed=1, scale=0.05)

    async def main():
        pool = [SimEngine(a100, f"sim-{i}") for i in range(2)]
        for engine in pool:
            await engine.start()
        router = ParrotRouter(2, a100, CoreConfig())
        results = await Driver(pool, router, deduce=deduce).run(apps)
        return results, [await engine.stats() for engine in pool]

    results, stats = run_virtual(main())
    assert not any(r.failed for r in results)
    arch_tokens = 15  # the architect's output at this scale, which every later call reads
    role_tokens = 30  # the shared role prompt
    for app in results:
        later = [c for c in app.calls if not c.name.endswith("/arch")]
        assert len(later) == 12
        # Each later call forked the role prompt plus the design: none recomputed them.
        assert all(c.cached_tokens >= role_tokens + arch_tokens for c in later)
    # The apps' session prefixes went with them; only the shared role prompt stays.
    assert sum(s.num_contexts for s in stats) <= 2


def test_bench_cluster_quick_run(tmp_path) -> None:
    from loadtest.bench_cluster import ROUTERS, main

    out = tmp_path / "cluster.json"
    argv = [
        "--quick",
        "--engines",
        "2",
        "--workloads",
        "map_reduce",
        "--scale",
        "0.05",
        "--apps-per-engine",
        "3",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["workloads"]["map_reduce"]["rows"]
    assert {r["router"] for r in rows} == set(ROUTERS)
    assert all(r["failed"] == 0 for r in rows)


async def test_parrot_engine_serves_the_simulator_over_http() -> None:
    from backend_support import free_port, wait_for_port

    from engine.remote import RemoteEngine

    port = free_port()
    argv = ["engine", "--backend", "sim", "--sim-profile", "a100-llama2-7b", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    engine = RemoteEngine(f"http://127.0.0.1:{port}")
    try:
        wait_for_port(port)
        await engine.start()
        assert engine.info.backend == "sim" and engine.info.model == "llama-2-7b"
        chunks = [c async for c in engine.generate(_request("h1", list(range(300, 400)), 4))]
        assert chunks[-1].finish_reason == "length" and len(chunks) == 4
    finally:
        await engine.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_validation_compares_medians_over_fresh_repetitions() -> None:
    from engine.sim.validate import Comparison, workload

    c = Comparison("x", 2, real_s=[10.0, 12.0, 30.0], sim_s=[11.0, 13.0, 9.0])
    assert c.real == 12.0 and c.sim == 11.0
    assert abs(c.error - (-1 / 12)) < 1e-9 and abs(c.real_spread - 20 / 12) < 1e-9
    # A repetition must not find the previous one's prompts in the engine's prefix cache.
    for name in ("burst", "map_reduce"):
        first, second = workload(name, 0.25, 0), workload(name, 0.25, 1)
        ids = [call.prompt[-1] for app in first for call in app.calls]
        assert ids != [call.prompt[-1] for app in second for call in app.calls]
