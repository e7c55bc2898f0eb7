"""The `parrot loadtest` report: locust's CSV stats and the server samples, summed and printed."""

from __future__ import annotations

import json
from pathlib import Path

HTTP_METHODS = {"GET", "POST", "PUT", "DELETE"}  # the other locust entries are synthetic


def read_stats(path: Path) -> dict:
    """The locustfile's final report: per-entry counts and percentiles, failures, exceptions."""
    return json.loads(path.read_text())


def summarize(config: dict, stats: dict, server: dict) -> dict:
    http = [e for e in stats["entries"] if e["type"] in HTTP_METHODS]
    errors = sum(e["failures"] for e in stats["entries"])
    errors += sum(x["count"] for x in stats["exceptions"])
    requests = sum(e["requests"] for e in http)
    ok = errors == 0 and requests > 0 and server["locust_rc"] == 0
    return {
        "config": config,
        "ok": ok,
        "requests": requests,
        "errors": errors,
        **stats,
        "server": server,
    }


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def blocks_text(sample: dict) -> str:
    blocks = sample.get("kv_blocks_used")
    return "-" if not blocks else str(sum(blocks.values()))


def kv_text(sample: dict) -> str:
    kv = sample.get("kv_used")
    return "-" if not kv else f"{100 * max(kv.values()):.2f}%"


def print_summary(report: dict) -> None:
    c = report["config"]
    print(f"\nparrot loadtest: {c['users']} users for {c['duration_s']:.0f} s against {c['host']}")
    print(f"{'entry':<46} {'reqs':>6} {'fails':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for e in report["entries"]:
        name = f"{e['type']} {e['name']}"
        print(
            f"{name:<46} {e['requests']:>6} {e['failures']:>6}"
            f" {fmt(e['p50_ms'], '.0f'):>8} {fmt(e['p99_ms'], '.0f'):>8}"
        )
    for fail in [*report["failures"], *report["exceptions"]]:
        print(f"  error x{fail['count']}: {fail.get('entry', '')} {fail['error'][:160]}")
    print(f"requests served: {report['requests']}   errors: {report['errors']}")
    s = report["server"]
    stages = (s["start"], s["end"], s["after"])
    print(f"{'server':<14}{'start':>10}{'end':>10}{'after':>10}")
    print(f"{'RSS MiB':<14}" + "".join(f"{fmt(x['rss_mib']):>10}" for x in stages))
    print(f"{'KV used':<14}" + "".join(f"{kv_text(x):>10}" for x in stages))
    print(f"{'KV blocks':<14}" + "".join(f"{blocks_text(x):>10}" for x in stages))
    print(f"{'in flight':<14}" + "".join(f"{x.get('in_flight', '-'):>10}" for x in stages))


def print_progress(sample: dict, duration: float) -> None:
    print(
        f"  [{sample['t_s']:6.0f}s /{duration:.0f}s] rss {fmt(sample['rss_mib'])} MiB"
        f"  kv {kv_text(sample)}  in flight {sample.get('in_flight', '-')}",
        flush=True,
    )
