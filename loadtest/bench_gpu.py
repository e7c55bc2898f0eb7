"""`parrot bench gpu`: the Triton kernels and the builtin engine on a CUDA device.

Needs nothing downloaded: models are Llama-architecture shapes with random bf16 weights
made directly on the GPU. Reports (1) decode attention over a shared 4k prefix plus 0-512
private tokens: shared-prefix kernel vs per-sequence paged kernel vs torch SDPA on gathered
tensors, with achieved bandwidth against the card's measured copy bandwidth; (2) engine
decode step time vs the floor (weight + KV bytes read per step / copy bandwidth), CUDA
graphs on and off; (3) the Bing-Copilot case (64 requests, ~6k-token shared prompt, 200-800
output tokens) with and without sharing: latency and KV memory. Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import Iterator, Mapping

import torch

from engine.builtin.config import ModelConfig
from engine.builtin.engine import BuiltinEngine
from engine.builtin.kv_cache import KVCache
from engine.builtin.model_files import LoadedModel, weight_shapes
from engine.builtin.options import EngineOptions
from engine.builtin.scheduler import SchedulerConfig
from engine.builtin.tokenizer import Tokenizer
from engine.protocol import FillRequest, GenerateRequest, SamplingParams
from loadtest.results import write_json

# (layers, hidden, heads, kv heads, intermediate, tied embeddings); vocab 128256 for both.
SHAPES = {"8b": (32, 4096, 32, 8, 14336, False), "1b": (16, 2048, 32, 8, 8192, True)}
GB = 1e9


def model_config(shape: str) -> ModelConfig:
    layers, hidden, heads, kv_heads, inter, tied = SHAPES[shape]
    return ModelConfig(
        name=f"random-llama-{shape}", vocab_size=128256, hidden_size=hidden,
        intermediate_size=inter, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=hidden // heads, rope_theta=500000.0, rms_norm_eps=1e-5, context_length=8192,
        tie_word_embeddings=tied, bos_token_id=None, eos_token_ids=(),
    )  # fmt: skip


class RandomWeights(Mapping[str, torch.Tensor]):
    """Each lookup makes a fresh bf16 tensor on the GPU, so no full copy is ever held twice."""

    def __init__(self, config: ModelConfig):
        self.shapes = weight_shapes(config)

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16, device="cuda")
        return torch.randn(shape, dtype=torch.bfloat16, device="cuda").mul_(0.02)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def random_model(shape: str) -> LoadedModel:
    import tokenizers

    config = model_config(shape)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}  # ids only: prompts are token ids
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tokenizer = Tokenizer(backend, bos_token_id=None, eos_token_ids=[], chat_template=None)
    return LoadedModel(config=config, weights=RandomWeights(config), tokenizer=tokenizer)


def param_bytes(config: ModelConfig) -> int:
    return 2 * sum(torch.Size(s).numel() for s in weight_shapes(config).values())


def weight_bytes(config: ModelConfig) -> int:
    """Bytes a decode step reads: every weight once, but of an untied embedding a few rows."""
    embed = 0 if config.tie_word_embeddings else 2 * config.vocab_size * config.hidden_size
    return param_bytes(config) - embed


def bench_kernels(args, bandwidth: float) -> list[dict]:
    from parrot_kernels.triton.bench import decode_row

    _, hidden, hq, hkv, _, _ = SHAPES[args.kernel_shape]
    return [
        decode_row(b, args.prefix_len, args.max_private, hq, hkv, hidden // hq, bandwidth)
        for b in args.kernel_batches
    ]


async def _with_engine(model: LoadedModel, share: bool, graphs: bool, work) -> object:
    """Run `work(engine)` on a fresh engine, then free it (and its GPU memory) entirely."""
    free, _ = torch.cuda.mem_get_info()  # KV budget: what the weights and activations leave
    kv_mb = max(1024, int((free - param_bytes(model.config) - 4 * 2**30) * 0.9 / 2**20))
    sched = SchedulerConfig(max_batch_size=64, max_step_tokens=2048, latency_cap=64)
    eng = BuiltinEngine(model, EngineOptions(
        device="cuda", dtype="bfloat16", kv_cache_mb=kv_mb, enable_prefix_cache=share,
        share_prefix_attention=share, scheduler=sched,
    ))  # fmt: skip
    if not graphs:
        eng.runner.graphs = None
    await eng.start()
    try:
        return await work(eng)
    finally:
        await eng.close()
        del eng
        gc.collect()
        torch.cuda.empty_cache()


async def _generate(eng, rid, ctx, tokens, max_tokens, parent=None) -> tuple[float, float]:
    """(first token time, last token time)."""
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    req = GenerateRequest(
        request_id=rid, context_id=ctx, parent_context_id=parent, prompt_token_ids=tokens,
        sampling=sp, free_on_finish=True,
    )  # fmt: skip
    first = last = 0.0
    async for _ in eng.generate(req):
        last = time.perf_counter()
        first = first or last
    return first, last


async def bench_engine(model: LoadedModel, args, bandwidth: float) -> list[dict]:
    """Decode step time: prompts are filled first, then every request decodes in lockstep."""
    c, n = model.config, args.new_tokens
    per_token = KVCache.bytes_per_token(c, torch.bfloat16)

    async def steps(eng: BuiltinEngine) -> list[dict]:
        rows = []
        for batch in args.engine_batches:
            rng = random.Random(batch)
            for i in range(batch):
                prompt = [rng.randrange(c.vocab_size) for _ in range(args.context)]
                await eng.fill(FillRequest(context_id=f"c{i}", token_ids=prompt))
            jobs = (_generate(eng, f"r{i}", f"c{i}", [], n) for i in range(batch))
            times = await asyncio.gather(*jobs)
            step = (max(t[1] for t in times) - max(t[0] for t in times)) / (n - 1)
            kv_bytes = batch * (args.context + n // 2) * per_token
            floor = (weight_bytes(c) + kv_bytes) / bandwidth
            rows.append({"batch": batch, "graphs": eng.runner.graphs is not None,
                         "step_s": step, "floor_s": floor, "over_floor": step / floor})  # fmt: skip
        return rows

    return [r for graphs in (True, False) for r in await _with_engine(model, True, graphs, steps)]


async def bench_bing(model: LoadedModel, args) -> dict:
    """64 requests over one ~6k-token shared prompt, 200-800 output tokens each."""
    c, rng = model.config, random.Random(0)
    prompt = [rng.randrange(c.vocab_size) for _ in range(args.bing_prompt)]
    queries = [[rng.randrange(c.vocab_size) for _ in range(32)] for _ in range(args.bing_users)]
    outputs = [rng.randint(200, 800) for _ in range(args.bing_users)]
    block_bytes = 16 * KVCache.bytes_per_token(c, torch.bfloat16)

    async def serve(eng: BuiltinEngine) -> dict:
        share = eng.runner.share_prefixes
        t0 = time.perf_counter()
        if share:
            await eng.fill(FillRequest(context_id="sys", token_ids=prompt))
        parent = "sys" if share else None
        jobs = [
            _generate(eng, f"u{i}", f"u{i}", q if share else prompt + q, n, parent)
            for i, (q, n) in enumerate(zip(queries, outputs, strict=True))
        ]
        lat = sorted(t[1] - t0 for t in await asyncio.gather(*jobs))
        stats = await eng.stats()
        return {
            "wall_s": lat[-1], "mean_latency_s": statistics.mean(lat),
            "p50_latency_s": lat[len(lat) // 2], "p90_latency_s": lat[int(0.9 * (len(lat) - 1))],
            "peak_kv_GB": stats.peak_used_blocks * block_bytes / GB,
            "preemptions": stats.preemptions,
        }  # fmt: skip

    return {
        "shared": await _with_engine(model, True, True, serve),
        "not_shared": await _with_engine(model, False, True, serve),
    }


def _print(res: dict) -> None:
    print(f"device: {res['device']}, copy bandwidth {res['copy_GBps']:.0f} GB/s")
    print(f"\n{'batch':>5} {'method':<18} {'us':>9} {'GB/s':>8} {'of copy bw':>10}")
    for r in res["kernels"]:
        for name in ("shared_prefix", "per_sequence", "sdpa_gathered", "gather_plus_sdpa"):
            m = r[name]
            print(f"{r['batch']:>5} {name:<18} {m['s'] * 1e6:>9.1f} {m['GBps']:>8.0f} "
                  f"{m['of_copy_bw']:>10.0%}")  # fmt: skip
        print(f"{'':>5} shared-prefix speedup vs per-sequence: {r['speedup_vs_per_sequence']:.1f}x")
    for shape, rows in res["engine"].items():
        print(
            f"\n{shape}: {'batch':>5} {'graphs':>7} {'step ms':>9} {'floor ms':>9} {'x floor':>8}"
        )
        for r in rows:
            ms = f"{r['step_s'] * 1e3:>9.2f} {r['floor_s'] * 1e3:>9.2f}"
            pad = " " * (len(shape) + 1)
            print(f"{pad} {r['batch']:>5} {r['graphs']!s:>7} {ms} {r['over_floor']:>8.2f}")
    for case, m in res.get("bing", {}).items():
        print(f"\nbing-copilot {case}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="parrot bench gpu", description=__doc__)
    ap.add_argument("--kernel-shape", default="8b", choices=SHAPES)
    ap.add_argument("--kernel-batches", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--prefix-len", type=int, default=4096)
    ap.add_argument("--max-private", type=int, default=512)
    ap.add_argument("--shapes", nargs="+", default=["1b", "8b"], choices=SHAPES)
    ap.add_argument("--engine-batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--context", type=int, default=512, help="prompt tokens per request")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--bing-shape", default="8b", choices=[*SHAPES, "none"])
    ap.add_argument("--bing-users", type=int, default=64)
    ap.add_argument("--bing-prompt", type=int, default=6144)
    ap.add_argument("--json", default="bench-results/gpu.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("parrot bench gpu: no CUDA device is visible to torch "
              f"{torch.__version__}; run it on a GPU machine", file=sys.stderr)  # fmt: skip
        return 2
    import triton

    from parrot_kernels.triton.bench import copy_bandwidth

    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__, "copy_GBps": 0.0, "engine": {}}  # fmt: skip
    bandwidth = copy_bandwidth()
    res["copy_GBps"] = bandwidth / GB
    res["kernels"] = bench_kernels(args, bandwidth)
    for shape in args.shapes:
        model = random_model(shape)
        res["engine"][shape] = asyncio.run(bench_engine(model, args, bandwidth))
        if shape == args.bing_shape:
            res["bing"] = asyncio.run(bench_bing(model, args))
        del model
        gc.collect()
    if args.bing_shape not in ("none", *args.shapes):
        res["bing"] = asyncio.run(bench_bing(random_model(args.bing_shape), args))
    _print(res)
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
