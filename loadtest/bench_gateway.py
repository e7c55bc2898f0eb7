"""`parrot bench gateway`: the gateway's own added latency and throughput, over an echo backend.

The gateway runs as `parrot serve --echo` (one uvicorn worker, in-process EchoEngine: a
model-free engine that answers a fixed short completion at once) in its own process; this
process is the load generator, a keep-alive HTTP/1.1 client on raw asyncio streams.

Added latency = round trip through the gateway - round trip to a baseline server in another
process that answers the very same bytes without doing anything (so loopback TCP, HTTP
parsing in both processes and the client itself are subtracted). Throughput = completed
requests/s with many concurrent connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHAT = {
    "model": "echo",
    "messages": [{"role": "user", "content": "Hello! What can a parrot say?"}],
    "max_tokens": 16,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(path: str, body: dict, port: int) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


class Connection:
    """One keep-alive connection; `call` sends a request and reads the whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, payload: bytes) -> tuple[int, bytes]:
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return status, body
                body += (await self.reader.readexactly(size + 2))[:-2]
        start = lower.index(b"content-length:") + 15
        length = int(lower[start : lower.index(b"\r\n", start)])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def latencies(port: int, payload: bytes, count: int) -> list[float]:
    """Sequential round trips on one connection (no queueing: pure per-request cost)."""
    conn = await Connection.open(port)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        status, _ = await conn.call(payload)
        samples.append(time.perf_counter() - start)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
    conn.close()
    return samples


async def throughput(port: int, payload: bytes, connections: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        conn = await Connection.open(port)
        while time.perf_counter() < deadline:
            status, _ = await conn.call(payload)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            done += 1
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - start)


async def serve_baseline(port: int, responses: dict[bytes, bytes]) -> None:
    """Answer each request with the recorded gateway response for its body, doing nothing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                start = lower.index(b"content-length:") + 15
                body = await reader.readexactly(int(lower[start : lower.index(b"\r\n", start)]))
                writer.write(responses[body])
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def run_async(coro: Any) -> Any:
    """Run on uvloop when installed: a lighter load generator disturbs the gateway less."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


async def raw_response(port: int, payload: bytes) -> bytes:
    """The gateway's full response bytes, for the baseline to replay."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
    data = await reader.read(-1)
    writer.close()
    return data.replace(b"Connection: close\r\n", b"").replace(b"connection: close\r\n", b"")


async def measure(gateway: int, baseline_port: int, args: argparse.Namespace) -> dict:
    results = {}
    for mode, stream in (("non-streaming", False), ("streaming", True)):
        payload = http_request("/v1/chat/completions", {**CHAT, "stream": stream}, gateway)
        await latencies(gateway, payload, args.warmup)
        through = await latencies(gateway, payload, args.requests)
        base_payload = payload.replace(f":{gateway}".encode(), f":{baseline_port}".encode())
        await latencies(baseline_port, base_payload, args.warmup)
        base = await latencies(baseline_port, base_payload, args.requests)
        rps = await throughput(gateway, payload, args.connections, args.seconds)
        results[mode] = {
            "rtt_p50_ms": pct(through, 0.5) * 1e3,
            "rtt_p99_ms": pct(through, 0.99) * 1e3,
            "baseline_p50_ms": pct(base, 0.5) * 1e3,
            "baseline_p99_ms": pct(base, 0.99) * 1e3,
            "added_p50_ms": (pct(through, 0.5) - pct(base, 0.5)) * 1e3,
            "added_p99_ms": (pct(through, 0.99) - pct(base, 0.99)) * 1e3,
            "added_mean_ms": (statistics.mean(through) - statistics.mean(base)) * 1e3,
            "max_rps": rps,
        }
    return results


def print_table(results: dict) -> None:
    print("\nparrot bench gateway: echo backend (EchoEngine, no model), 1 gateway worker")
    head = ("mode", "added p50", "added p99", "RTT p50", "RTT p99", "baseline p50", "req/s")
    print("  ".join(f"{h:>13}" for h in head))
    for mode, r in results.items():
        cells = [mode] + [
            f"{r[k]:.3f} ms"
            for k in ("added_p50_ms", "added_p99_ms", "rtt_p50_ms", "rtt_p99_ms", "baseline_p50_ms")
        ]
        cells.append(f"{r['max_rps']:.0f}")
        print("  ".join(f"{c:>13}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="parrot bench gateway", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="latency samples per mode")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--connections", type=int, default=32, help="for the throughput phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput phase length")
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter phases")
    parser.add_argument("--out", default="bench-results/bench_gateway.json")
    parser.add_argument("--serve-baseline", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--responses", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        recorded = json.loads(Path(args.responses).read_text())
        responses = {bytes.fromhex(k): bytes.fromhex(v) for k, v in recorded.items()}
        run_async(serve_baseline(args.serve_baseline, responses))
        return 0
    if args.quick:
        args.requests, args.warmup, args.seconds = 500, 100, 2.0
    return run(args)


def run(args: argparse.Namespace) -> int:
    gateway, baseline = free_port(), free_port()
    env = {**os.environ, "PARROT_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--echo", "--port", str(gateway)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)]
    try:
        wait_ready(gateway, procs[0])
        responses = {}
        for stream in (False, True):
            body = json.dumps({**CHAT, "stream": stream}).encode()
            payload = http_request("/v1/chat/completions", {**CHAT, "stream": stream}, gateway)
            responses[body.hex()] = run_async(raw_response(gateway, payload)).hex()
        recorded = Path(args.out).with_suffix(".responses.json")
        recorded.parent.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(responses))
        base_cmd = [
            sys.executable,
            "-m",
            "loadtest.bench_gateway",
            "--serve-baseline",
            str(baseline),
            "--responses",
            str(recorded),
        ]
        procs.append(subprocess.Popen(base_cmd))
        wait_ready(baseline, procs[1])
        results = run_async(measure(gateway, baseline, args))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    print_table(results)
    report = {
        "backend": "echo (EchoEngine: fixed short completion, no model)",
        "workers": 1,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("serve_baseline", "responses")
        },
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
