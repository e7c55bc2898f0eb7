"""Check the simulator against the real builtin engine: same workloads, completion times.

    python -m engine.sim.validate [--profile cpu-smollm2] [--workloads burst chain ...]
                                  [--repeats 3]

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
# A repetition adds 1000 to every seed, for the same reason.
SIMPLE: dict[str, Callable[[int], list[AppSpec]]] = {
    "burst": lambda rep: _single_calls(8, 0.0, 160, 48, seed=1 + 1000 * rep),
    "staggered": lambda rep: _single_calls(10, 0.4, 240, 32, seed=2 + 1000 * rep),
    "shared_prefix": lambda rep: _single_calls(8, 0.0, 24, 32, shared=400, seed=3 + 1000 * rep),
    "long_prompt": lambda rep: _single_calls(3, 0.0, 1400, 16, seed=4 + 1000 * rep),
}


APPS = {"mixed": 8}  # apps per application workload (default 2): mixed needs both kinds


def workload(name: str, scale: float, rep: int = 0) -> list[AppSpec]:
    if name in SIMPLE:
        return SIMPLE[name](rep)
    n = APPS.get(name, 2)
    seed = 5 + len(name) + 1000 * rep
    return poisson_apps(name, n_apps=n, rate=0.5 * n / 2, seed=seed, scale=scale)


@dataclass(frozen=True, slots=True)
class Comparison:
    name: str
    apps: int
    real_s: list[float]  # mean completion time of each repetition
    sim_s: list[float]

    @property
    def real(self) -> float:
        return statistics.median(self.real_s)

    @property
    def sim(self) -> float:
        return statistics.median(self.sim_s)

    @property
    def error(self) -> float:
        """Relative error of the simulated median against the measured median."""
        return (self.sim - self.real) / self.real

    @property
    def real_spread(self) -> float:
        """How far apart the real repetitions were: (max - min) / median."""
        return (max(self.real_s) - min(self.real_s)) / self.real


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
    real: EngineClient, profile: CostProfile, names: list[str], scale: float, repeats: int
) -> list[Comparison]:
    """Repetitions are whole passes over the workloads, so a slow spell of the machine lands
    on one repetition of each rather than on every repetition of one."""
    await real.start()
    try:
        real_s: dict[str, list[float]] = {n: [] for n in names}
        sim_s: dict[str, list[float]] = {n: [] for n in names}
        sizes: dict[str, int] = {}
        for rep in range(repeats):
            for name in names:
                apps = workload(name, scale, rep)
                sizes[name] = len(apps)
                real_s[name].append(statistics.fmean(await measure(real, apps)))
                # The virtual loop cannot nest in this one: it runs on a thread of its own.
                simulated = await asyncio.to_thread(simulate, profile, apps)
                sim_s[name].append(statistics.fmean(simulated))
        return [Comparison(n, sizes[n], real_s[n], sim_s[n]) for n in names]
    finally:
        await real.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.sim.validate", description=__doc__)
    ap.add_argument("--profile", default="cpu-smollm2")
    ap.add_argument("--workloads", nargs="+", default=[*SIMPLE, *WORKLOADS])
    ap.add_argument("--scale", type=float, default=0.25, help="length scale of app workloads")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, as calibrated")
    ap.add_argument("--repeats", type=int, default=3, help="passes; medians are compared")
    args = ap.parse_args(argv)
    unknown = [w for w in args.workloads if w not in SIMPLE and w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads: {unknown}")
    from engine.builtin.factory import create_builtin_engine

    profile = load_profile(args.profile)
    real = create_builtin_engine(None, num_threads=args.threads)
    print(f"{'workload':<15}{'apps':>5}{'real s':>9}{'spread':>8}{'sim s':>8}{'err':>8}")
    worst = 0.0
    started = time.perf_counter()
    for c in asyncio.run(compare(real, profile, args.workloads, args.scale, args.repeats)):
        worst = max(worst, abs(c.error))
        print(
            f"{c.name:<15}{c.apps:>5}{c.real:>9.2f}{c.real_spread:>8.0%}{c.sim:>8.2f}"
            f"{c.error:>+8.1%}"
        )
    print(f"worst error {worst:.1%} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
