"""`parrot bench cluster`: the Parrot scheduler vs request-level routers on simulated engines.

16-64 `SimEngine`s (a calibrated cost profile, default: Llama-2-7B on A100) run on the
virtual clock, so hours of cluster time take minutes. For each workload (the paper's five
application shapes, engine/sim/workload.py) and each load (apps/s rising), every router
runs the same apps; the table reports mean and p90 application completion time, mean
normalized latency (s per output token) and the sustainable rate: the highest load whose
p90 completion time stays within `--slo` times the best p90 at the lowest load.

Routers: `parrot` is the gateway's own placement (gateway/core: AppFifo order,
CapacityFit, LatencyCap with AdaptiveCap, Isolation, LeastWork with held prefixes free) with
the DAG run server-side and shared prefixes forked on the engines; the baselines (engine/sim/
routers.py) see independent requests and pay the client round trip on every call. This is
the one benchmark that imports gateway internals: the policies are the thing measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from engine.protocol import Objective
from engine.sim.clock import run_virtual
from engine.sim.driver import AppResult, CallView, Driver, Router
from engine.sim.engine import SimEngine
from engine.sim.profile import CostProfile, load_profile
from engine.sim.routers import LeastLoaded, PrefixAffine, RoundRobin
from engine.sim.workload import WORKLOADS, AppSpec, CallSpec, poisson_apps
from gateway.core.config import CoreConfig
from gateway.core.policies import AdaptiveCap, CapacityFit, Demand, EngineView
from gateway.core.scheduler import NOT_STARTED, Placer


def deduce(call: CallSpec) -> tuple[Objective, int]:
    """Objectives as gateway/core/objectives.py deduces them: the app fetches its results
    with its criteria, marking every call upstream; calls fanning in to one consumer form a
    task group that runs as throughput work, ahead of background work when a latency goal
    sits downstream (priority 1)."""
    if call.group is not None:
        return "throughput", 1 if call.objective == "latency" else 0
    return call.objective, 0


class ParrotRouter:
    """gateway/core's placement over simulated engines: ready calls wait in one queue and a
    drain places them whenever something changes, exactly as `gateway.core.scheduler`."""

    name = "parrot"
    app_aware = True

    def __init__(self, num_engines: int, profile: CostProfile, config: CoreConfig) -> None:
        self._placer = Placer(CapacityFit(config.max_kv_fill))
        self._caps = AdaptiveCap(
            config.latency_target_s_per_token, config.latency_cap, config.latency_cap_max
        )
        self._capacity = profile.capacity_tokens
        self._num_engines = num_engines
        self._waiting: dict[int, tuple[CallView, asyncio.Future[int]]] = {}
        self._running: dict[int, tuple[Demand, int]] = {}
        self._prefixes: list[set[bytes]] = [set() for _ in range(num_engines)]
        self._app_ranks: dict[str, int] = {}
        self._scheduled = False

    def _demand(self, call: CallView) -> Demand:
        key = call.prefix_key.encode() if call.prefix_key else None
        return Demand(
            call_id=str(call.seq),
            objective=call.objective,
            app_rank=self._app_ranks.get(call.app_id, NOT_STARTED),
            seq=call.seq,
            est_tokens=len(call.prompt_ids)
            - call.prefix_tokens
            - call.run_tokens
            + call.output_tokens,
            priority=call.priority,
            group_id=call.group,
            prefix_key=key,
            prefix_tokens=call.prefix_tokens,
            run_key=call.run_key.encode() if call.run_key else None,
            run_tokens=call.run_tokens,
        )

    async def acquire(self, call: CallView) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[call.seq] = (call, future)
        self._kick()
        return await future

    def release(self, call: CallView, engine: int) -> None:
        self._running.pop(call.seq, None)
        self._kick()

    def observe(self, engine: int, s_per_token: float) -> None:
        self._caps.observe(str(engine), s_per_token)

    def _kick(self) -> None:
        # Drain once per loop iteration, so a burst of ready calls is placed as a whole.
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        views = [
            EngineView(
                str(i),
                capacity_tokens=self._capacity,
                latency_cap=self._caps.cap(str(i)),
                prefixes=set(self._prefixes[i]),
            )
            for i in range(self._num_engines)
        ]
        for demand, engine in self._running.values():
            views[engine].take(demand)
        demands = [self._demand(call) for call, _ in self._waiting.values()]
        placed, _held = self._placer.place(demands, views)
        for demand, view in placed:
            call, future = self._waiting.pop(demand.seq)
            engine = int(view.member_id)
            self._app_ranks.setdefault(call.app_id, len(self._app_ranks))
            for key in (demand.prefix_key, demand.run_key):
                if key is not None:
                    self._prefixes[engine].add(key)
            self._running[call.seq] = (demand, engine)
            future.set_result(engine)


ROUTERS = ("parrot", "round-robin", "least-loaded", "prefix-affine")


def routers(
    names: list[str], engines: int, profile: CostProfile, config: CoreConfig
) -> dict[str, Callable[[], Router]]:
    makers: dict[str, Callable[[], Router]] = {
        "parrot": lambda: ParrotRouter(engines, profile, config),
        "round-robin": lambda: RoundRobin(engines),
        "least-loaded": lambda: LeastLoaded(engines),
        "prefix-affine": lambda: PrefixAffine(engines, profile.block_size),
    }
    return {n: makers[n] for n in names}


async def _run(profile: CostProfile, engines: int, router: Router, apps, rtt: float):
    pool = [SimEngine(profile, engine_id=f"sim-{i}") for i in range(engines)]
    for engine in pool:
        await engine.start()
    try:
        return await Driver(pool, router, client_rtt_s=rtt, deduce=deduce).run(apps)
    finally:
        for engine in pool:
            await engine.close()


def summarize(results: list[AppResult]) -> dict[str, float]:
    done = [r for r in results if not r.failed]
    latencies = sorted(r.latency_s for r in done) or [float("inf")]
    per_token = [r.latency_s / max(r.output_tokens, 1) for r in done] or [float("inf")]
    span = max((r.end_s for r in done), default=0.0) or 1.0
    summary = {
        "apps": len(results),
        "failed": len(results) - len(done),
        "mean_s": statistics.fmean(latencies),
        "p90_s": latencies[int(0.9 * (len(latencies) - 1))],
        "s_per_token": statistics.fmean(per_token),
        "apps_per_s": len(done) / span,
    }
    # The mixed workload's two kinds are judged apart: chat (one call) by its per-token
    # latency, the batch jobs by completion time.
    chats = [r for r in done if len(r.calls) == 1]
    batches = [r for r in done if len(r.calls) > 1]
    if chats and batches:
        summary["chat_s_per_token"] = statistics.fmean(
            r.latency_s / max(r.output_tokens, 1) for r in chats
        )
        summary["batch_mean_s"] = statistics.fmean(r.latency_s for r in batches)
    return summary


def solo_latency(profile: CostProfile, kind: str, scale: float, rtt: float) -> float:
    """One app alone on one engine: the unit the loads are expressed in."""
    apps = poisson_apps(kind, 1, 1.0, seed=99, scale=scale)
    results = run_virtual(_run(profile, 1, LeastLoaded(1), apps, rtt))
    return results[0].latency_s


def _table(kind: str, rows: list[dict]) -> str:
    head = f"{'router':<15}{'rate/s':>8}{'mean s':>9}{'p90 s':>9}{'s/token':>9}{'apps/s':>8}"
    lines = [f"\n== {kind}", head + f"{'failed':>7}"]
    for r in rows:
        lines.append(
            f"{r['router']:<15}{r['rate']:>8.2f}{r['mean_s']:>9.2f}{r['p90_s']:>9.2f}"
            f"{r['s_per_token']:>9.3f}{r['apps_per_s']:>8.2f}{r['failed']:>7}"
            + (
                f"  chat {r['chat_s_per_token']:.3f} s/token, batch {r['batch_mean_s']:.2f} s"
                if "chat_s_per_token" in r
                else ""
            )
        )
    return "\n".join(lines)


def sustainable(rows: list[dict], slo: float) -> dict[str, float]:
    """Per router, the highest rate up to which every tested rate kept its p90 completion
    time within `slo` x the best p90 at the lowest rate (0: not even the lowest)."""
    lowest = min(r["rate"] for r in rows)
    reference = min(r["p90_s"] for r in rows if r["rate"] == lowest)
    best: dict[str, float] = {}
    failed: set[str] = set()
    for r in sorted(rows, key=lambda r: r["rate"]):
        name = r["router"]
        best.setdefault(name, 0.0)
        if name in failed:
            continue
        if r["p90_s"] <= slo * reference and not r["failed"]:
            best[name] = r["rate"]
        else:
            failed.add(name)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="parrot bench cluster", description=__doc__)
    ap.add_argument("--engines", type=int, default=16)
    ap.add_argument("--profile", default="a100-llama2-7b")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    ap.add_argument(
        "--loads",
        type=float,
        nargs="+",
        default=[1, 2, 4, 8],
        help="offered load in units of engines / (solo app latency)",
    )
    ap.add_argument("--apps-per-engine", type=float, default=6.0)
    ap.add_argument("--scale", type=float, default=1.0, help="length scale of the apps")
    ap.add_argument("--rtt", type=float, default=0.25, help="client round trip per call, s")
    ap.add_argument("--slo", type=float, default=3.0)
    ap.add_argument("--latency-target", type=float, default=None, help="s/token (AdaptiveCap)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 engines, 2 loads, 2 workloads")
    ap.add_argument("--json", default="bench-results/cluster.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.engines, args.loads = 4, [1, 4]
        args.workloads = args.workloads[:2] if len(args.workloads) > 2 else args.workloads
    profile = load_profile(args.profile)
    config = CoreConfig()
    if args.latency_target is not None:
        config = CoreConfig(latency_target_s_per_token=args.latency_target)
    n_apps = max(int(args.engines * args.apps_per_engine), 8)
    report: dict = {"args": vars(args), "profile": profile.name, "workloads": {}}
    started = time.perf_counter()
    for kind in args.workloads:
        unit = args.engines / solo_latency(profile, kind, args.scale, 0.0)
        rows = []
        for load in args.loads:
            rate = load * unit
            apps: list[AppSpec] = poisson_apps(kind, n_apps, rate, args.seed, args.scale)
            for name, make in routers(args.routers, args.engines, profile, config).items():
                t0 = time.perf_counter()
                results = run_virtual(_run(profile, args.engines, make(), apps, args.rtt))
                row = {"router": name, "load": load, "rate": rate, **summarize(results)}
                row["wall_s"] = time.perf_counter() - t0
                rows.append(row)
        print(_table(kind, rows), flush=True)
        best = sustainable(rows, args.slo)
        print("sustainable rate (apps/s): " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()))
        report["workloads"][kind] = {"rows": rows, "sustainable": best}
    print(f"\n{args.engines} engines, {n_apps} apps per run, {time.perf_counter() - started:.0f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return 0
