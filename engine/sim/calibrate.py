"""Measure a real engine through the protocol and fit a `CostProfile` to it.

    python -m engine.sim.calibrate --out engine/sim/presets/cpu-smollm2.json

Decode: B contexts of L unique tokens are filled, then B generates of T tokens run together;
(wall time) / T is one step of B rows over contexts of about L + T/2 tokens. Two context
lengths per B separate the decode attention term (seconds per query-key pair) from the
per-row cost. Prefill: one fill of n fresh tokens is one step of n rows (n <= the step
budget); the same n filled after P tokens already in the context adds n*P prefill pairs,
which gives the prefill attention term.
Works for any `EngineClient`: the builtin engine on CPU here, or `--device cuda` on a GPU
machine for a GPU profile.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

from engine.client import EngineClient
from engine.protocol import FillRequest, GenerateRequest, SamplingParams
from engine.sim.profile import CostProfile

_ids = itertools.count()


@dataclass(slots=True)
class Measurements:
    decode_s: dict[tuple[int, int], float] = field(default_factory=dict)  # (B, L) -> s/step
    prefill_s: dict[int, float] = field(default_factory=dict)  # n -> s
    offset_prefill_s: dict[tuple[int, int], float] = field(default_factory=dict)  # (n, P) -> s
    decode_steps: int = 0


def _fresh(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(100, vocab) for _ in range(n)]


async def _decode_step_s(
    engine: EngineClient, rng: random.Random, batch: int, length: int, steps: int
) -> float:
    vocab = engine.info.vocab_size
    names = [f"cal{next(_ids)}" for _ in range(batch)]
    await asyncio.gather(
        *(
            engine.fill(FillRequest(context_id=n, token_ids=_fresh(rng, length, vocab)))
            for n in names
        )
    )
    sampling = SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True)

    async def run(name: str) -> None:
        request = GenerateRequest(
            request_id=name, context_id=name, sampling=sampling, free_on_finish=True
        )
        async for _ in engine.generate(request):
            pass

    start = time.perf_counter()
    await asyncio.gather(*(run(n) for n in names))
    return (time.perf_counter() - start) / steps


async def _prefill_s(engine: EngineClient, rng: random.Random, n: int, offset: int = 0) -> float:
    name = f"cal{next(_ids)}"
    vocab = engine.info.vocab_size
    if offset:
        await engine.fill(FillRequest(context_id=name, token_ids=_fresh(rng, offset, vocab)))
    tokens = _fresh(rng, n, vocab)
    start = time.perf_counter()
    await engine.fill(FillRequest(context_id=name, token_ids=tokens))
    elapsed = time.perf_counter() - start
    await engine.free(name)
    return elapsed


async def measure(
    engine: EngineClient,
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    lengths: tuple[int, int] = (40, 800),
    prefills: tuple[int, ...] = (16, 64, 128, 256, 512),
    offset_prefill: tuple[int, int] = (256, 1536),
    steps: int = 12,
    repeats: int = 3,
    seed: int = 0,
) -> Measurements:
    rng = random.Random(seed)
    m = Measurements(decode_steps=steps)
    await _prefill_s(engine, rng, 64)  # warm-up
    for n in prefills:
        m.prefill_s[n] = statistics.median(
            [await _prefill_s(engine, rng, n) for _ in range(repeats)]
        )
    n, offset = offset_prefill
    m.offset_prefill_s[offset_prefill] = statistics.median(
        [await _prefill_s(engine, rng, n, offset) for _ in range(repeats)]
    )
    for batch in batches:
        for length in lengths:
            m.decode_s[(batch, length)] = await _decode_step_s(engine, rng, batch, length, steps)
    return m


def fit(m: Measurements, **profile_fields) -> CostProfile:
    """Attention costs from the context-length differences, then per-row costs."""
    steps = m.decode_steps
    slopes = []
    by_batch: dict[int, list[tuple[int, float]]] = {}
    for (batch, length), seconds in m.decode_s.items():
        by_batch.setdefault(batch, []).append((length, seconds))
    for batch, points in by_batch.items():
        (l0, t0), (l1, t1) = min(points), max(points)
        if l1 > l0:
            slopes.append((t1 - t0) / (batch * (l1 - l0)))
    k = max(statistics.median(slopes), 0.0) if slopes else 0.0
    kp = 0.0
    for (n, offset), seconds in m.offset_prefill_s.items():
        if n in m.prefill_s:
            kp = max((seconds - m.prefill_s[n]) / (n * offset), 0.0)
    rows: dict[int, float] = {}
    for batch, points in by_batch.items():
        length, seconds = min(points)
        rows[batch] = seconds - k * batch * (length + steps / 2)
    for n, seconds in m.prefill_s.items():
        own = seconds - kp * n * (n + 1) / 2
        rows[n] = own if n not in rows else (rows[n] + own) / 2
    xs = sorted(rows)
    ys = [max(rows[x], 1e-6) for x in xs]
    return CostProfile(
        rows=tuple(xs),
        rows_s=tuple(ys),
        decode_attn_s_per_pair=k,
        prefill_attn_s_per_pair=kp,
        **profile_fields,
    )


async def _calibrate(args: argparse.Namespace) -> CostProfile:
    from engine.builtin.factory import create_builtin_engine

    engine = create_builtin_engine(
        args.model, device=args.device, kv_cache_mb=args.kv_cache_mb, num_threads=args.threads
    )
    await engine.start()
    try:
        m = await measure(engine, steps=args.steps, repeats=args.repeats)
    finally:
        await engine.close()
    info = engine.info
    sched = engine.options.scheduler
    return fit(
        m,
        name=args.name,
        model=info.model,
        source="python -m engine.sim.calibrate " + " ".join(sys.argv[1:]),
        block_size=info.block_size,
        num_blocks=engine.blocks.num_blocks,
        context_length=info.context_length,
        max_batch_size=sched.max_batch_size,
        max_step_tokens=sched.max_step_tokens,
        latency_cap=sched.latency_cap,
        notes={
            "decode_s": str({f"{b}x{n}": round(s, 5) for (b, n), s in m.decode_s.items()}),
            "prefill_s": str({n: round(s, 5) for n, s in m.prefill_s.items()}),
            "offset_prefill_s": str(
                {f"{n}@{p}": round(s, 5) for (n, p), s in m.offset_prefill_s.items()}
            ),
        },
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.sim.calibrate", description=__doc__)
    ap.add_argument("--model", default=None, help="weights (default: the embedded SmolLM2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kv-cache-mb", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--name", default="cpu-smollm2")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the profile JSON here")
    args = ap.parse_args(argv)
    profile = asyncio.run(_calibrate(args))
    text = profile.to_json()
    if args.out:
        profile.save(args.out)
        print(f"wrote {args.out}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
