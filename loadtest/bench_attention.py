"""`parrot bench attention`: decode attention over long shared prompts on the CPU's C kernels.

The shape of the paper's shared-prompt workload: a few long system prompts, many users'
rows forked from each. Two parts, each printed as a table and written as JSON:

- kernels: the attention of `--layers` layers of those rows, once per variant: the paged
  kernel (each row reads its whole table, prefix included) and the shared-prefix kernel
  (parrot_kernels/native/shared_decode.c) in AVX-512 BF16 vectors and, where the OS grants
  them, on AMX tiles. "hot" reruns one layer's cache (it stays in the cores' caches as far
  as it fits); "cold" runs a distinct cache per layer after a write that evicts the last
  level cache, as a model step does. Random bf16 K, V and queries: timing only.
- engine: the builtin engine alone on the embedded model, rows forked from the same
  prompts decoding together (`--new-tokens` each): the median decode step with shared-prefix
  attention on and off (off: the paged kernel for every row, torch ops for prefill chunks);
  and a short prefill chunk (a user's question) over a long context, timed as a whole fill.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.builtin.attention import split_group
from engine.builtin.engine import BuiltinEngine
from engine.builtin.model_files import LoadedModel, load_model
from engine.builtin.options import EngineOptions
from engine.builtin.scheduler import SchedulerConfig
from engine.protocol import FillRequest, GenerateRequest, SamplingParams
from loadtest.results import write_json
from parrot_kernels import native

BS = 16
# The long shared-prompt case's four prompt lengths (`parrot bench apps`, 1,100-7,400 tokens)
# to whole blocks of 16, with a 16-token multiple kept off a span boundary.
PROMPTS = (1104, 3200, 5296, 7392)
HQ, HKV, D = 9, 3, 64  # SmolLM2's head layout
EVICT_MB = 512  # written between cold runs: more than any last-level cache here


def _rows_case(prompts: list[int], rows: int, own: int, layers: int):
    """Block tables of `rows` rows per prompt (the prompt's blocks, then `own` tokens of their
    own), a cache per layer, queries, and the shared-prefix items the engine would form."""
    tables, lens, groups = [], [], []
    nxt = 0
    per = native.SharedDecode.rows_per_item(HQ, HKV)
    for p in prompts:
        blocks = p // BS
        prefix = list(range(nxt, nxt + blocks))
        nxt += blocks
        members = []
        for _ in range(rows):
            mine = -(-own // BS)
            tables.append(prefix + list(range(nxt, nxt + mine)))
            nxt += mine
            lens.append(blocks * BS + own)
            members.append(len(tables) - 1)
        groups += [(part, blocks * BS) for part in split_group(members, per)]
    width = max(len(t) for t in tables)
    padded = torch.zeros(len(tables), width, dtype=torch.long)
    for i, t in enumerate(tables):
        padded[i, : len(t)] = torch.tensor(t)
    gen = torch.Generator().manual_seed(0)

    def cache() -> torch.Tensor:
        return torch.randn(nxt * BS, HKV, D, generator=gen).to(torch.bfloat16)

    ks = [cache() for _ in range(layers)]
    vs = [cache() for _ in range(layers)]
    q = torch.randn(len(tables), HQ, D, generator=gen).to(torch.bfloat16)
    items = native.SharedDecode.items(groups, len(tables))
    return q, ks, vs, padded, torch.tensor(lens), items


def bench_kernels(lib: native.Library, args) -> dict:
    q, ks, vs, tables, lens, items = _rows_case(args.prompts, args.rows, args.own, args.layers)
    scale = D**-0.5
    variants = {"paged": None}
    variants.update({f"shared, {name}": k for name, k in lib.shared_variants().items()})
    evict = torch.empty(EVICT_MB << 20, dtype=torch.uint8)

    def run(kernel, layer: int) -> None:
        if kernel is None:
            lib.decode(q, ks[layer], vs[layer], tables, lens, BS, scale)
            return
        out, lse = torch.empty_like(q), torch.empty(q.shape[:2])
        kernel(q, ks[layer], vs[layer], tables, lens, BS, scale, items, out, lse)

    runs: dict[str, dict[str, list[float]]] = {n: {"hot": [], "cold": []} for n in variants}
    for _ in range(args.repeat):  # variants in turn, so a slow spell hits each alike
        for name, kernel in variants.items():
            run(kernel, 0)
            t0 = time.perf_counter()
            for _ in range(args.layers):
                run(kernel, 0)
            runs[name]["hot"].append((time.perf_counter() - t0) * 1000)
            evict.add_(1)
            t0 = time.perf_counter()
            for layer in range(args.layers):
                run(kernel, layer)
            runs[name]["cold"].append((time.perf_counter() - t0) * 1000)
    return runs


def _tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 49000) for _ in range(n)]


async def _decode_steps(model: LoadedModel, args, share: bool) -> list[float]:
    """Decode-step times (ms) of every prompt's rows decoding together, from the step trace."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = str(Path(tmp) / "steps.jsonl")
        sched = SchedulerConfig(max_batch_size=max(64, len(args.prompts) * args.rows))
        options = EngineOptions(share_prefix_attention=share, step_trace=trace, scheduler=sched)
        engine = BuiltinEngine(model, options)
        await engine.start()
        try:
            for i, n in enumerate(args.prompts):
                await engine.fill(FillRequest(context_id=f"p{i}", token_ids=_tokens(i, n)))
            sampling = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)

            async def row(i: int, j: int) -> None:
                request = GenerateRequest(
                    request_id=f"u{i}.{j}",
                    context_id=f"u{i}.{j}",
                    parent_context_id=f"p{i}",
                    prompt_token_ids=_tokens(1000 + 100 * i + j, 16),
                    sampling=sampling,
                    free_on_finish=True,
                )
                async for _ in engine.generate(request):
                    pass

            started = time.monotonic()
            await asyncio.gather(
                *(row(i, j) for i in range(len(args.prompts)) for j in range(args.rows))
            )
        finally:
            await engine.close()
        steps = [json.loads(line) for line in Path(trace).read_text().splitlines()]
    full = len(args.prompts) * args.rows
    # Steps that decode every row and nothing else (the rows' prefills come first).
    return [
        s["s"] * 1000
        for s in steps
        if s["t"] >= started
        and s["lat_rows"] + s["tput_rows"] == full
        and s["lat_tokens"] + s["tput_tokens"] == full
    ]


async def _chunk_fills(model: LoadedModel, args, share: bool) -> dict[str, float]:
    """Median time (ms) of filling a `--chunk`-token question into a fork of each prompt."""
    engine = BuiltinEngine(model, EngineOptions(share_prefix_attention=share))
    await engine.start()
    out = {}
    try:
        for i, n in enumerate(args.prompts):
            await engine.fill(FillRequest(context_id=f"p{i}", token_ids=_tokens(i, n)))
            times = []
            for j in range(5):
                t0 = time.perf_counter()
                ctx = f"q{i}.{j}"
                fill = FillRequest(
                    context_id=ctx, parent_context_id=f"p{i}", token_ids=_tokens(j, args.chunk)
                )
                await engine.fill(fill)
                times.append((time.perf_counter() - t0) * 1000)
                await engine.free(ctx)
            out[str(n)] = statistics.median(times)
            await engine.free(f"p{i}")
    finally:
        await engine.close()
    return out


def _table(res: dict, args) -> str:
    lines = [
        f"decode attention, {args.layers} layers of {args.rows} rows per prompt over prompts "
        f"{'/'.join(map(str, args.prompts))} (ms; median of {args.repeat}, all runs after)",
        f"{'kernel':18s}{'hot':>8s}{'cold':>8s}   runs hot / cold",
    ]
    for name, r in res["kernels"].items():
        hot, cold = statistics.median(r["hot"]), statistics.median(r["cold"])
        runs = " / ".join(", ".join(f"{x:.0f}" for x in r[k]) for k in ("hot", "cold"))
        lines.append(f"{name:18s}{hot:8.1f}{cold:8.1f}   {runs}")
    if "engine" in res:
        e = res["engine"]
        lines += [
            "",
            f"engine alone, embedded model: decode step of {len(args.prompts) * args.rows} rows "
            f"(median ms), and a {args.chunk}-token fill over each prompt (median ms of 5)",
            f"{'shared-prefix attention':26s}{'step':>8s}"
            + "".join(f"{'fill@' + str(n):>11s}" for n in args.prompts),
        ]
        for label, key in (("on", "on"), ("off (paged kernel, torch)", "off")):
            fills = "".join(f"{e[key]['fills'][str(n)]:11.1f}" for n in args.prompts)
            lines.append(f"{label:26s}{statistics.median(e[key]['steps']):8.1f}{fills}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="parrot bench attention", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--prompts", type=int, nargs="+", default=list(PROMPTS))
    ap.add_argument("--rows", type=int, default=12, help="rows forked from each prompt")
    ap.add_argument("--own", type=int, default=24, help="kernels: each row's own tokens")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=24, help="engine: tokens each row decodes")
    ap.add_argument("--chunk", type=int, default=30, help="engine: the question's tokens")
    ap.add_argument("--model", default=None, help="engine: model path (default: embedded)")
    ap.add_argument("--no-engine", action="store_true", help="the kernels only")
    ap.add_argument("--json", default="bench-results/attention.json")
    args = ap.parse_args(argv)
    if any(p % BS for p in args.prompts):
        ap.error(f"--prompts: each a multiple of {BS} tokens (whole blocks)")
    lib = native.load()
    if lib is None:
        print("parrot bench attention: the C kernels did not build here (see the log)")
        return 1
    res: dict = {
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
        "shared_tiles": None if lib.shared is None else lib.shared.tiles,
        "kernels": bench_kernels(lib, args),
    }
    if not args.no_engine:
        model = load_model(args.model)
        res["engine"] = {
            key: {
                "steps": asyncio.run(_decode_steps(model, args, share)),
                "fills": asyncio.run(_chunk_fills(model, args, share)),
            }
            for key, share in (("on", True), ("off", False))
        }
    print(_table(res, args))
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
