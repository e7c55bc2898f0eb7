"""`parrot bench apps`: the paper's five application workloads, Parrot vs request-level serving.

Every system is started fresh on a free port and driven over HTTP by the same client code
(Parrot through its semantic-variable API, the others by client-side orchestration), with an
injected round-trip time per request. Prints a table with the ratios baseline/parrot and
vllm/parrot, writes JSON, and draws plots into docs/img/.

    parrot bench apps --quick                      # all five, small sizes (make bench)
    parrot bench apps --workload chain --systems parrot baseline --rtt 0 0.05
    parrot bench apps --quick --repeat 3           # medians of three interleaved passes
    parrot bench apps --workload shared_prompt --case "apps long"   # one case of a sweep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest import systems
from loadtest.apps import chain, map_reduce, mixed, multi_agent, shared_prompt
from loadtest.apps.clients import OpenAIApi, ParrotApi
from loadtest.apps.text import paragraph

ROOT = Path(__file__).resolve().parents[1]
ALL_WORKLOADS = ("chain", "chain_bg", "map_reduce", "shared_prompt", "multi_agent", "mixed")
DEFAULT_SYSTEMS = ("parrot", "baseline", "baseline+apc", "vllm")
# Where the paper also compared against a latency-centric service (one that keeps batches
# small for per-request latency): `baseline-latcap` runs these workloads as well.
LATCAP_WORKLOADS = ("map_reduce", "multi_agent", "mixed")


def cases(workload: str, quick: bool) -> list[tuple[str, Any]]:
    """(label, params) for each point of a workload's sweep."""
    if workload == "chain":
        sizes = [(200, 25)] if quick else [(100, 25), (200, 25), (400, 25), (200, 50)]
        return [
            (f"{c}tok/{o}out", chain.ChainParams(chunk_tokens=c, output_tokens=o)) for c, o in sizes
        ]
    if workload == "chain_bg":
        rates = [1.0, 2.0] if quick else [0.0, 0.5, 1.0, 2.0, 4.0]
        return [(f"bg {r}/s", (chain.ChainParams(), r)) for r in rates]
    if workload == "map_reduce":
        outs = [25] if quick else [25, 50]
        return [(f"8x200tok/{o}out", map_reduce.MapReduceParams(output_tokens=o)) for o in outs]
    if workload == "shared_prompt":
        burst = shared_prompt.SharedPromptParams()
        rates = shared_prompt.SharedPromptParams(
            rates=(1.0, 2.0, 4.0, 8.0) if quick else (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
            window_s=6.0 if quick else 20.0,
            refine=1 if quick else 2,
        )
        out = [
            ("16 users x 700tok", ("burst", burst)),
            ("4 apps, 1/sustainable rate", ("rates", rates)),
        ]
        if not quick:  # the paper's prompt lengths (1.1k-7.4k tokens), evenly spaced
            long = dataclasses.replace(
                rates,
                app_prompt_tokens=(1100, 3200, 5300, 7400),
                rates=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
            )
            out.append(("4 apps long, 1/sustainable rate", ("rates", long)))
        return out
    if workload == "multi_agent":
        files = [4] if quick else [4, 8, 16]
        return [(f"{n} files", multi_agent.MultiAgentParams(files=n)) for n in files]
    if workload == "mixed":
        return [("chat 1/s + 4 map-reduce", mixed.MixedParams(chat_requests=12 if quick else 30))]
    raise ValueError(f"unknown workload {workload}")


def fresh(params: Any, run_key: str) -> Any:
    """The case's parameters with a seed of their own for this run, so that no run finds its
    prompts in a prefix cache warmed by an earlier run (every system of one run gets the same
    seed, hence the same prompts)."""
    seed = zlib.crc32(run_key.encode())
    if isinstance(params, tuple):
        return tuple(fresh(p, run_key) for p in params)
    if dataclasses.is_dataclass(params):
        return dataclasses.replace(params, seed=seed)
    return params


async def _background(api: OpenAIApi, rate: float, stop: asyncio.Event, seed: int) -> dict:
    """Poisson requests from other clients (200-token prompts, 25 tokens out), until `stop`;
    their own latencies are kept too, to show what the chain's speed cost them."""
    rng = random.Random(seed)

    async def one(prompt: str) -> float:
        t = time.perf_counter()
        await api.complete(prompt, 25)
        return time.perf_counter() - t

    tasks = []
    while rate > 0 and not stop.is_set():
        tasks.append(asyncio.create_task(one(paragraph(rng, 200) + "\nSummary:")))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.expovariate(rate))
    done = [t for t in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(t, float)]
    return {
        "background_requests": len(tasks),
        "background_failed": len(tasks) - len(done),
        "background_mean_s": sum(done) / len(done) if done else None,
    }


async def run_case(workload: str, params: Any, system: systems.Running, rtt: float) -> dict:
    kind = systems.CLIENT[system.name]
    parrot = ParrotApi(system.base_url, system.model, rtt) if kind == "parrot" else None
    plain = OpenAIApi(system.base_url, system.model, rtt)
    try:
        if workload == "chain_bg":
            params, rate = params
            # Background clients of Parrot say what they are: batch work nobody waits on (as
            # the paper's background apps, which never awaited their outputs). A request-level
            # server has no way to hear that, so the others get plain requests.
            bg_client = OpenAIApi(
                system.base_url, system.model, rtt, objective="throughput" if parrot else None
            )
            stop = asyncio.Event()
            bg = asyncio.create_task(_background(bg_client, rate, stop, seed=params.seed + 1))
            await asyncio.sleep(0.5)  # let the background load build up first
            res = await (
                chain.run_parrot(parrot, params) if parrot else chain.run_baseline(plain, params)
            )
            stop.set()
            res.update(await bg)
            await bg_client.close()
            return res
        module = {
            "chain": chain,
            "map_reduce": map_reduce,
            "multi_agent": multi_agent,
            "shared_prompt": shared_prompt,
            "mixed": mixed,
        }[workload]
        if workload == "shared_prompt":
            mode, params = params
            return await (
                module.run_parrot(parrot, params, mode)
                if parrot
                else module.run_baseline(plain, params, mode)
            )
        if workload == "mixed":
            return await (
                mixed.run_parrot(parrot, plain, params)
                if parrot
                else mixed.run_baseline(plain, params)
            )
        return await (
            module.run_parrot(parrot, params) if parrot else module.run_baseline(plain, params)
        )
    finally:
        await plain.close()
        if parrot:
            await parrot.close()


def headline(workload: str, result: dict) -> float:
    """The one number compared across systems (lower is better). For the shared-prompt rates
    that is the mean gap between arrivals at the sustainable rate, so that the ratios in the
    table are ratios of sustainable rates."""
    if "chat_s_per_token" in result:
        return result["chat_s_per_token"]
    if "sustainable_rate" in result:
        rate = result["sustainable_rate"]
        return 1.0 / rate if rate > 0 else float("inf")
    return result.get("mean_latency_s", result["e2e_s"])


def median_sample(workload: str, runs: list[dict]) -> dict:
    """The run whose headline is the median (the lower of the two middle ones for an even
    count), with every run's headline attached as `samples` so the spread is on record."""
    ordered = sorted(runs, key=lambda r: headline(workload, r))
    return {**ordered[(len(ordered) - 1) // 2], "samples": [headline(workload, r) for r in runs]}


def run(
    args: argparse.Namespace,
    progress: Callable[[str], None],
    checkpoint: Callable[[dict], None] | None = None,
) -> dict:
    """All systems are started first and every case runs on each system in turn, so a
    slow period of a shared machine hits all systems alike instead of one of them."""
    results: dict = {}
    plan = [
        (w, label, p)
        for w in args.workload
        for label, p in cases(w, args.quick)
        if not args.case or any(c in label for c in args.case)
    ]
    with contextlib.ExitStack() as stack:
        running = []
        for name in args.systems:
            try:
                log = str(Path(args.json).with_suffix(f".{name}.log"))
                running.append(stack.enter_context(systems.start(name, log_path=log)))
            except (RuntimeError, TimeoutError) as exc:
                progress(f"skipping {name}: {exc}")
        jobs = [
            (w, label, p, rtt, s)
            for w, label, p in plan
            for rtt in args.rtt
            for s in running
            if s.name != "baseline-latcap" or w in LATCAP_WORKLOADS
        ]
        samples: dict[str, dict[str, list[dict]]] = {}
        failures: dict[str, dict[str, list[str]]] = {}
        total = len(jobs) * args.repeat
        # Repetitions are whole passes over the plan, so a slow spell of the machine lands on
        # one sample of every case rather than on every sample of one case.
        for rep in range(args.repeat):
            for i, (workload, label, params, rtt, system) in enumerate(jobs, 1):
                t0 = time.perf_counter()
                key = f"{workload}|{label}|rtt={int(rtt * 1000)}ms"
                step = f"[{rep * len(jobs) + i}/{total}] {system.name:<15} {key:<48}"
                run_params = fresh(params, f"{key}|{rep}")
                try:
                    res = asyncio.run(run_case(workload, run_params, system, rtt))
                except Exception as exc:  # one failed run must not lose the others
                    failures.setdefault(key, {}).setdefault(system.name, []).append(repr(exc))
                    progress(f"{step} FAILED {exc!r}")
                    continue
                samples.setdefault(key, {}).setdefault(system.name, []).append(res)
                took = time.perf_counter() - t0
                progress(f"{step} {headline(workload, res):8.3f}  ({took:.0f}s)")
                if checkpoint is not None:
                    checkpoint({"samples": samples, "failures": failures})
    for key, row in samples.items():
        results[key] = {name: median_sample(key.split("|")[0], runs) for name, runs in row.items()}
    for key, row in failures.items():
        for name, errors in row.items():
            progress(f"{key} {name}: {len(errors)} failed run(s): {errors[0]}")
            if name in results.get(key, {}):
                results[key][name]["failed_runs"] = errors
    return results


def table(results: dict) -> str:
    names = sorted(
        {n for row in results.values() for n in row},
        key=lambda n: list(DEFAULT_SYSTEMS + ("baseline-latcap",)).index(n),
    )
    head = f"{'case':<58}" + "".join(f"{n:>16}" for n in names)
    head += f"{'base/parrot':>13}{'apc/parrot':>12}{'vllm/parrot':>13}{'latcap/parrot':>15}"
    lines = [head, "-" * len(head)]
    for key, row in results.items():
        w = key.split("|")[0]
        vals = {n: headline(w, r) for n, r in row.items()}
        line = f"{key:<58}" + "".join(
            f"{vals[n]:>16.3f}" if n in vals else f"{'-':>16}" for n in names
        )
        p = vals.get("parrot")
        ratios = (("baseline", 13), ("baseline+apc", 12), ("vllm", 13), ("baseline-latcap", 15))
        for other, width in ratios:
            ratio = vals[other] / p if p and other in vals else None
            line += f"{ratio:>{width}.2f}" if ratio else f"{'-':>{width}}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="parrot bench apps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--workload", nargs="+", default=list(ALL_WORKLOADS), choices=ALL_WORKLOADS)
    ap.add_argument(
        "--systems", nargs="+", default=list(DEFAULT_SYSTEMS), choices=[*systems.FLAGS, "vllm"]
    )
    ap.add_argument(
        "--rtt",
        type=float,
        nargs="+",
        default=[0.0, 0.05],
        help="injected client-server round trip per request, seconds",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (make bench)")
    ap.add_argument(
        "--case", nargs="+", help="only the cases whose label contains one of these strings"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="passes over all cases; tables show the median"
    )
    ap.add_argument("--json", default="bench-results/apps.json")
    ap.add_argument("--plots", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args(argv)
    if set(args.workload) & set(LATCAP_WORKLOADS) and "baseline-latcap" not in args.systems:
        args.systems.append("baseline-latcap")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    partial = Path(args.json).with_suffix(".partial.json")
    results = run(
        args,
        lambda line: print(line, file=sys.stderr, flush=True),
        lambda state: partial.write_text(json.dumps(state)),  # every run so far, if we die
    )
    print(table(results))
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json} ({time.perf_counter() - started:.0f}s)")
    from loadtest.plots import draw

    for path in draw(results, Path(args.plots)):
        print(f"plot {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
