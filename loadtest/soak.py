"""`parrot loadtest`: run the locust users headless for a fixed time while watching the server.

    parrot loadtest [--users 4] [--spawn-rate 1] [--duration 60s] [--host URL] [--echo]
    parrot loadtest --soak            # the 10-minute soak: 8 users, a sample every 30 s

Without --host it starts `parrot serve` on a free port (--echo: the model-free backend).
It samples the server's resident memory and KV cache use (GET /metrics) before the load,
during it, and --settle seconds after it stops; prints per-entry p50/p99 latency and those
samples, writes JSON (--out), and exits 1 if any request errored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from loadtest.soak_report import print_progress, print_summary, read_stats, summarize
from loadtest.systems import free_port, launched, serve_command

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PRESETS = {  # users, spawn rate, duration, sample interval, output
    "run": (4, 1.0, "60s", 5.0, "bench-results/loadtest.json"),
    "soak": (8, 1.0, "10m", 30.0, "bench-results/soak.json"),
}


def parse_duration(text: str) -> float:
    """Seconds in '90', '90s', '10m' or '1h30m' (locust's -t syntax)."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not text.strip() or m is None:
        raise argparse.ArgumentTypeError(f"bad duration '{text}' (e.g. 60s, 10m, 1h30m)")
    h, mins, s = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mins * 60 + s)


class Probe:
    """Samples one server: the RSS of its process tree and the engine gauges of /metrics."""

    def __init__(self, root_url: str, pid: int | None) -> None:
        self.root_url = root_url
        self.pid = pid

    def _rss_mib(self) -> float | None:
        import psutil  # locust's dependency, so present wherever this command can run

        if self.pid is None:
            return None
        try:
            proc = psutil.Process(self.pid)
            procs = [proc, *proc.children(recursive=True)]
            return round(sum(p.memory_info().rss for p in procs) / 2**20, 1)
        except psutil.Error:
            return None

    def _gauges(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(f"{self.root_url}/metrics", timeout=10.0).text
        except httpx.HTTPError:
            return {}
        kv: dict[str, float] = {}
        blocks: dict[str, int] = {}
        out: dict = {"in_flight": 0, "running": 0, "waiting": 0}
        names = {
            "parrot_requests_in_flight": "in_flight",
            "parrot_engine_running_requests": "running",
            "parrot_engine_waiting_requests": "waiting",
        }
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "parrot_engine_kv_usage_ratio":
                    kv[s.labels["engine"]] = round(s.value, 6)
                elif s.name == "parrot_engine_kv_blocks_used":
                    blocks[s.labels["engine"]] = int(s.value)
                elif s.name in names:
                    out[names[s.name]] += int(s.value)
        # Engines without a paged KV cache (echo) report no ratio: None, not 0.
        return {**out, "kv_used": kv or None, "kv_blocks_used": blocks or None}

    def sample(self, t0: float) -> dict:
        return {
            "t_s": round(time.monotonic() - t0, 1),
            "rss_mib": self._rss_mib(),
            **self._gauges(),
        }


def _listener_pid(url: str) -> int | None:
    """The local process listening on the URL's port, if it is local and visible to us."""
    import psutil

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return conn.pid
    return None


@contextlib.contextmanager
def started_server(serve_args: list[str], log_path: Path) -> Iterator[tuple[str, int]]:
    """`parrot serve` on a free port until ready: (root URL, pid)."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    with launched(serve_command(port, serve_args), f"{root}/ready", str(log_path)) as proc:
        yield root, proc.pid


def locust_command(args: argparse.Namespace, root: str, report: Path) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    cmd += ["--host", root, "-u", str(args.users), "-r", str(args.spawn_rate)]
    cmd += ["-t", f"{int(args.duration_s)}s", "--stop-timeout", str(args.stop_timeout)]
    cmd += ["--report-json", str(report), "--loglevel", "WARNING"]
    cmd += ["--max-tokens", str(args.max_tokens)]
    if args.model:
        cmd += ["--model", args.model]
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    return cmd


def run_load(args: argparse.Namespace, root: str, probe: Probe, stats: Path) -> dict:
    """Run locust to the end, sampling the server; the samples and locust's exit status."""
    t0 = time.monotonic()
    start = probe.sample(t0)
    series = [start]
    log_path = Path(args.out).with_suffix(".locust.log")
    stats.unlink(missing_ok=True)  # a stale report must not pass for this run
    cmd = locust_command(args, root, stats)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            end = start
            ticks = _ticks(args.sample_every, args.duration_s)  # the last one is "end"
            while proc.poll() is None:
                now = time.monotonic() - t0
                due = ticks[0] if ticks else now + args.sample_every
                try:
                    proc.wait(timeout=max(due - now, 0.0))
                    break
                except subprocess.TimeoutExpired:
                    pass
                sample = probe.sample(t0)
                series.append(sample)
                print_progress(sample, args.duration_s)
                if ticks:
                    end = sample
                    ticks.pop(0)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    time.sleep(args.settle)
    after = probe.sample(t0)
    series.append(after)
    return {
        "locust_rc": proc.returncode,
        "start": start,
        "end": end,
        "after": after,
        "series": series,
        "locust_log": str(log_path),
    }


def _ticks(every: float, duration: float) -> list[float]:
    """Sample times under load: every interval, and one just before the load stops."""
    ticks = [every * k for k in range(1, int(duration // every) + 1) if every * k < duration - 1]
    return [*ticks, max(duration - 1.0, 0.5)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parrot loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--soak", action="store_true", help="the 10-minute soak preset")
    p.add_argument("--users", type=int, help="concurrent users (4; soak 8)")
    p.add_argument("--spawn-rate", type=float, help="users started per second (1)")
    p.add_argument("--duration", type=parse_duration, help="load time: 60s, 10m (60s; soak 10m)")
    p.add_argument("--host", help="a running gateway (default: start `parrot serve`)")
    p.add_argument("--server-pid", type=int, help="--host's process, for RSS (default: lookup)")
    p.add_argument("--echo", action="store_true", help="the started server uses the echo backend")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `parrot serve` flag")
    p.add_argument("--model", help="model id (default: the first the server lists)")
    p.add_argument("--max-tokens", type=int, default=12, help="output tokens per call (12)")
    p.add_argument("--api-key", help="bearer key for the gateway")
    p.add_argument("--sample-every", type=float, help="seconds between samples (5; soak 30)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after the load (10)")
    p.add_argument("--stop-timeout", type=int, default=30, help="for users to finish (30)")
    p.add_argument("--out", help="JSON report (bench-results/loadtest.json; soak soak.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # the server and locust are stopped by their finally blocks
        return 130


def run(args: argparse.Namespace) -> int:
    users, rate, duration, every, out = PRESETS["soak" if args.soak else "run"]
    args.users = args.users or users
    args.spawn_rate = args.spawn_rate or rate
    args.duration_s = args.duration or parse_duration(duration)
    args.sample_every = args.sample_every or every
    args.out = args.out or out
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    serve_args = (["--echo"] if args.echo else []) + args.serve_arg
    with contextlib.ExitStack() as stack:
        if args.host:
            root = args.host.rstrip("/").removesuffix("/v1")
            pid = args.server_pid or _listener_pid(root)
        else:
            log = Path(args.out).with_suffix(".server.log")
            print(f"starting parrot serve {' '.join(serve_args)} (log: {log})", flush=True)
            root, pid = stack.enter_context(started_server(serve_args, log))
        config = {
            "users": args.users,
            "spawn_rate": args.spawn_rate,
            "duration_s": args.duration_s,
            "host": root,
            "started_server": not args.host,
            "serve_args": serve_args,
            "max_tokens": args.max_tokens,
        }
        print(f"running {args.users} users for {args.duration_s:.0f} s against {root}", flush=True)
        stats = Path(args.out).with_suffix(".locust.json")
        server = run_load(args, root, Probe(root, pid), stats)
        if not stats.exists():
            text = Path(server["locust_log"]).read_text(errors="replace")
            print(f"locust did not run (exit {server['locust_rc']}):\n{text[-2000:]}")
            return 1
        report = summarize(config, read_stats(stats), server)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_summary(report)
    print(f"wrote {args.out}" + ("" if report["ok"] else f"; FAILED (see {server['locust_log']})"))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
