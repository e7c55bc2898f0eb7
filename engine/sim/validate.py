"""Check the simulator against the real builtin engine: same workloads, completion times.

    python -m engine.sim.validate [--profile cpu-smollm2] [--workloads burst chain ...]

Each workload runs on one real `BuiltinEngine` (wall clock) and on one `SimEngine` with the
profile (virtual clock) through the same driver, and the per-app completion times are
compared: four single-call shapes, then the application workloads of
`engine.sim.workload.WORKLOADS` (the five of loadtest/apps/ with synthetic tokens, at
`--scale`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.client import EngineClient
from engine.sim.clock import run_virtual
from engine.sim.driver import AppResult, CallView, Driver
from engine.sim.engine import SimEngine
from engine.sim.profile import CostProfile, load_profile
from engine.sim.workload import WORKLOADS, AppSpec, CallSpec, Tokenbank, poisson_apps


class OneEngine:
    """Everything on engine 0; app-aware, so shared prefixes are filled once and forked."""

    name = "one-engine"
    app_aware = True

    async def acquire(self, call: CallView) -> int:
        return 0

    def release(self, call: CallView, engine: int) -> None:
        return None

    def observe(self, engine: int, s_per_token: float) -> None:
        return None


def _single_calls(
    n: int, gap_s: float, prompt: int, output: int, shared: int = 0, seed: int = 0
) -> list[AppSpec]:
    bank = Tokenbank(random.Random(seed))
    apps = []
    for i in range(n):
        segments = (bank.shared("common", shared),) if shared else ()
        call = CallSpec(f"a{i}/c", (*segments, bank.fresh(prompt)), output)
        apps.append(AppSpec(f"a{i}", "single", i * gap_s, (call,)))
    return apps


# Distinct seeds: the real engine serves all workloads in turn, and must not find one
# workload's prompts in its prefix cache from another.
SIMPLE: dict[str, Callable[[], list[AppSpec]]] = {
    "burst": lambda: _single_calls(8, 0.0, 160, 48, seed=1),
    "staggered": lambda: _single_calls(10, 0.4, 240, 32, seed=2),
    "shared_prefix": lambda: _single_calls(8, 0.0, 24, 32, shared=400, seed=3),
    "long_prompt": lambda: _single_calls(3, 0.0, 1400, 16, seed=4),
}


APPS = {"mixed": 8}  # apps per application workload (default 2): mixed needs both kinds


def workload(name: str, scale: float) -> list[AppSpec]:
    if name in SIMPLE:
        return SIMPLE[name]()
    n = APPS.get(name, 2)
    return poisson_apps(name, n_apps=n, rate=0.5 * n / 2, seed=5 + len(name), scale=scale)


@dataclass(frozen=True, slots=True)
class Comparison:
    name: str
    real_s: list[float]  # per-app completion times
    sim_s: list[float]

    @property
    def mean_error(self) -> float:
        """Relative error of the mean completion time."""
        real = statistics.fmean(self.real_s)
        return (statistics.fmean(self.sim_s) - real) / real

    @property
    def max_app_error(self) -> float:
        return max(abs(s - r) / r for r, s in zip(self.real_s, self.sim_s, strict=True))


async def _run(engine: EngineClient, apps: list[AppSpec]) -> list[AppResult]:
    await engine.start()
    try:
        return await Driver([engine], OneEngine()).run(apps)
    finally:
        await engine.close()


def simulate(profile: CostProfile, apps: list[AppSpec]) -> list[float]:
    results = run_virtual(_run(SimEngine(profile), apps))
    return [r.latency_s for r in results]


async def measure(real: EngineClient, apps: list[AppSpec]) -> list[float]:
    """Completion times on a started real engine (left running for the next workload)."""
    return [r.latency_s for r in await Driver([real], OneEngine()).run(apps)]


async def compare(
    real: EngineClient, profile: CostProfile, names: list[str], scale: float
) -> list[Comparison]:
    await real.start()
    try:
        out = []
        for name in names:
            apps = workload(name, scale)
            measured = await measure(real, apps)
            # The virtual loop cannot nest in this one: it runs on a thread of its own.
            simulated = await asyncio.to_thread(simulate, profile, apps)
            out.append(Comparison(name, measured, simulated))
        return out
    finally:
        await real.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.sim.validate", description=__doc__)
    ap.add_argument("--profile", default="cpu-smollm2")
    ap.add_argument("--workloads", nargs="+", default=[*SIMPLE, *WORKLOADS])
    ap.add_argument("--scale", type=float, default=0.25, help="length scale of app workloads")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, as calibrated")
    args = ap.parse_args(argv)
    unknown = [w for w in args.workloads if w not in SIMPLE and w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads: {unknown}")
    from engine.builtin.factory import create_builtin_engine

    profile = load_profile(args.profile)
    real = create_builtin_engine(None, num_threads=args.threads)
    header = ("workload", "apps", "real mean s", "sim mean s", "err", "max app err")
    print(
        f"{header[0]:<15}{header[1]:>5}{header[2]:>13}{header[3]:>12}{header[4]:>8}{header[5]:>13}"
    )
    worst = 0.0
    started = time.perf_counter()
    for c in asyncio.run(compare(real, profile, args.workloads, args.scale)):
        worst = max(worst, abs(c.mean_error))
        print(
            f"{c.name:<15}{len(c.real_s):>5}{statistics.fmean(c.real_s):>13.2f}"
            f"{statistics.fmean(c.sim_s):>12.2f}{c.mean_error:>+8.1%}{c.max_app_error:>13.1%}"
        )
    print(f"worst mean error {worst:.1%} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
