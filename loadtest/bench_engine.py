"""`parrot bench engine`: the builtin engine against Hugging Face transformers, same weights.

Measures prefill tokens/s, decode tokens/s at several batch sizes (fixed output lengths
with ignore_eos), and the shared-prefix case (forked vs. unshared). Prints a table and
writes JSON. Decode rate counts only the decode phase: from the moment every request in
the batch has its first token until the last token arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import torch

from engine.builtin.config import hf_config
from engine.builtin.engine import BuiltinEngine
from engine.builtin.model_files import LoadedModel, load_model
from engine.builtin.options import EngineOptions
from engine.builtin.scheduler import SchedulerConfig
from engine.protocol import FillRequest, GenerateRequest, SamplingParams
from loadtest.results import write_json

DECODE_CONTEXT = 16  # default prompt tokens before a decode run (the table says when it differs)


def _tokens(seed: int, n: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, vocab) for _ in range(n)]


def _engine(model: LoadedModel, dtype: str, **kw) -> BuiltinEngine:
    sched = SchedulerConfig(max_batch_size=64, max_step_tokens=kw.pop("max_step_tokens", 512))
    return BuiltinEngine(model, EngineOptions(dtype=dtype, scheduler=sched, **kw))


async def _generate(eng, rid, tokens, max_tokens, parent=None, ctx=None):
    """Returns (time of first token, time of last token)."""
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    first = last = 0.0
    async for _chunk in eng.generate(
        GenerateRequest(
            request_id=rid,
            context_id=ctx or rid,
            parent_context_id=parent,
            prompt_token_ids=tokens,
            sampling=sp,
            free_on_finish=True,
        )
    ):
        last = time.perf_counter()
        first = first or last
    return first, last


async def _prefill_rate(eng, n: int, vocab: int) -> float:
    # Warm up with a prompt of the same size: the first matmuls of a new shape are slow.
    await _generate(eng, "warm", _tokens(1, n, vocab), 1)
    t0 = time.perf_counter()
    await eng.fill(FillRequest(context_id="p", token_ids=_tokens(2, n, vocab)))
    dt = time.perf_counter() - t0
    await eng.free("p")
    return n / dt


async def _decode_rate(eng, batch: int, new: int, vocab: int, context: int) -> float:
    await _generate(eng, "warm", _tokens(3, 16, vocab), 4)
    times = await asyncio.gather(
        *(_generate(eng, f"d{i}", _tokens(10 + i, context, vocab), new) for i in range(batch))
    )
    start = max(t[0] for t in times)
    end = max(t[1] for t in times)
    return batch * (new - 1) / (end - start)


async def _shared_prefix(eng, shared: bool, users: int, prefix_len: int, new: int, vocab: int):
    prefix = _tokens(7, prefix_len, vocab)
    suffixes = [_tokens(100 + i, 16, vocab) for i in range(users)]
    await _generate(eng, "warm", _tokens(3, 16, vocab), 2)
    t0 = time.perf_counter()
    if shared:
        await eng.fill(FillRequest(context_id="sys", token_ids=prefix))
        await asyncio.gather(
            *(_generate(eng, f"u{i}", s, new, parent="sys") for i, s in enumerate(suffixes))
        )
        await eng.free("sys")
    else:
        await asyncio.gather(
            *(_generate(eng, f"u{i}", prefix + s, new) for i, s in enumerate(suffixes))
        )
    wall = time.perf_counter() - t0
    return wall, (await eng.stats()).peak_used_blocks


async def bench_parrot(model: LoadedModel, args) -> dict:
    vocab = model.config.vocab_size
    out: dict = {"prefill": {}, "decode": {}, "shared_prefix": {}}
    kernels = {"native_kernels": not args.no_native_kernels, "tile_max_rows": args.tile_max_rows}
    for n in args.prefill:
        eng = _engine(model, args.dtype, max_step_tokens=max(args.prefill), **kernels)
        await eng.start()
        out["prefill"][n] = await _prefill_rate(eng, n, vocab)
        await eng.close()
    for b in args.batch:
        eng = _engine(model, args.dtype, **kernels)
        await eng.start()
        # The median of several runs: a shared 2-core machine has slow periods.
        runs = sorted(
            [
                await _decode_rate(eng, b, args.new_tokens, vocab, args.decode_context)
                for _ in range(args.repeat)
            ]
        )
        out["decode"][b] = runs[len(runs) // 2]
        out.setdefault("decode_runs", {})[b] = runs
        await eng.close()
    for shared in (False, True):
        eng = _engine(model, args.dtype, enable_prefix_cache=False, **kernels)
        await eng.start()
        wall, peak = await _shared_prefix(
            eng, shared, args.users, args.prefix_len, args.shared_new_tokens, vocab
        )
        out["shared_prefix"]["forked" if shared else "not_shared"] = {
            "wall_s": wall,
            "peak_kv_blocks": peak,
        }
        await eng.close()
    return out


def bench_transformers(model: LoadedModel, args) -> dict:
    """The same weights in transformers' LlamaForCausalLM, float32 (its CPU default)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf = LlamaForCausalLM(LlamaConfig(**hf_config(c)))
    hf.load_state_dict(model.weights, strict=False)
    hf.tie_weights()
    hf.eval()
    vocab = c.vocab_size
    out: dict = {"prefill": {}, "decode": {}}
    with torch.inference_mode():
        for n in args.prefill:
            ids = torch.tensor([_tokens(2, n, vocab)])
            hf(ids[:, :64])
            t0 = time.perf_counter()
            hf(ids)
            out["prefill"][n] = n / (time.perf_counter() - t0)
        for b in args.batch:
            ids = torch.tensor([_tokens(10 + i, args.decode_context, vocab) for i in range(b)])
            kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
            runs = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
                t1 = time.perf_counter()
                n = args.new_tokens
                hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
                t2 = time.perf_counter()
                # decode phase only: subtract one prefill-plus-first-token run
                runs.append(b * (n - 1) / ((t2 - t1) - (t1 - t0)))
            out["decode"][b] = sorted(runs)[len(runs) // 2]
    return out


def _table(res: dict, args) -> str:
    p, h = res["parrot"], res.get("transformers")
    lines = [f"{'metric':<44}{'parrot':>12}{'transformers':>14}"]
    for n in args.prefill:
        hv = f"{h['prefill'][n]:>14.0f}" if h else f"{'-':>14}"
        lines.append(f"{f'prefill tok/s ({n} tokens)':<44}{p['prefill'][n]:>12.0f}{hv}")
    for b in args.batch:
        hv = f"{h['decode'][b]:>14.0f}" if h else f"{'-':>14}"
        at = f", {args.decode_context}-tok context" if args.decode_context != DECODE_CONTEXT else ""
        lines.append(f"{f'decode tok/s (batch {b}{at})':<44}{p['decode'][b]:>12.1f}{hv}")
    sp = p["shared_prefix"]
    ns, fk = sp["not_shared"], sp["forked"]
    label = f"{args.users} users x {args.prefix_len}-tok prefix"
    lines.append(f"{label + ', not shared: wall s':<44}{ns['wall_s']:>12.2f}")
    lines.append(f"{label + ', forked: wall s':<44}{fk['wall_s']:>12.2f}")
    lines.append(f"{'  speedup (not shared / forked)':<44}{ns['wall_s'] / fk['wall_s']:>12.2f}")
    lines.append(
        f"{'  peak KV blocks not shared / forked':<44}"
        f"{ns['peak_kv_blocks']:>6} / {fk['peak_kv_blocks']:<5}"
        f"({ns['peak_kv_blocks'] / max(1, fk['peak_kv_blocks']):.1f}x)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="parrot bench engine", description=__doc__)
    ap.add_argument("--model", default=None, help="model path (default: embedded SmolLM2)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prefill", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--decode-context",
        type=int,
        default=DECODE_CONTEXT,
        help="prompt tokens before the decode runs",
    )
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--prefix-len", type=int, default=1000)
    ap.add_argument("--shared-new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="decode runs per batch (median)")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument(
        "--no-native-kernels",
        action="store_true",
        help="torch ops for decode attention and layer ops",
    )
    ap.add_argument(
        "--tile-max-rows",
        type=int,
        default=EngineOptions().tile_max_rows,
        help="largest step on the AMX tile matmul (0: oneDNN for every step)",
    )
    ap.add_argument("--json", default="bench-results/engine.json")
    args = ap.parse_args(argv)
    model = load_model(args.model)
    res = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "dtype": args.dtype,
        "decode_context": args.decode_context,
        "native_kernels": not args.no_native_kernels,
        "tile_max_rows": args.tile_max_rows,
        "parrot": asyncio.run(bench_parrot(model, args)),
    }
    if not args.no_transformers:
        res["transformers"] = bench_transformers(model, args)
    print(_table(res, args))
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
