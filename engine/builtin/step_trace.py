"""An optional per-step trace of the builtin engine, for profiling scheduling decisions.

One JSON line per model step: when it started (monotonic seconds), how long the forward
pass and sampling took, and what the step held, split by objective: rows and tokens of
latency-critical work and of throughput work; also its attention work (`kv`: query-key pairs
per head and layer) and the torch threads its attention ran on. It answers questions that
end-to-end timings on a noisy machine cannot, e.g. how much of a chat token's wait was
throughput prefill that shared its step. Off by default; `--step-trace PATH` turns it on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO

from engine.builtin.scheduler import Chunk


class StepTrace:
    def __init__(self, path: str):
        self._file: IO[str] = open(path, "a", buffering=1 << 16)  # noqa: SIM115 - closed in close()

    def record(
        self, started: float, seconds: float, chunks: Sequence[Chunk], kv: int, threads: int
    ) -> None:
        lat_rows = lat_tokens = tput_rows = tput_tokens = 0
        for c in chunks:
            if not c.num_tokens:
                continue
            if c.seq.is_latency:
                lat_rows += 1
                lat_tokens += c.num_tokens
            else:
                tput_rows += 1
                tput_tokens += c.num_tokens
        line = {
            "t": round(started, 6),
            "s": round(seconds, 6),
            "lat_rows": lat_rows,
            "lat_tokens": lat_tokens,
            "tput_rows": tput_rows,
            "tput_tokens": tput_tokens,
            "kv": kv,
            "threads": threads,
        }
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._file.close()
