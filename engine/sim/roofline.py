"""Cost profiles derived from published hardware and model figures (a roofline model).

    python -m engine.sim.roofline --model llama-2-7b --gpu a100-80g --out PATH
    python -m engine.sim.roofline --model llama-2-7b --gpu-bench bench-results/gpu.json

A step reads every weight once (bandwidth bound) and computes 2 FLOPs per parameter per row
(compute bound); it takes the larger of the two plus a fixed per-step overhead. A decoding
sequence reads its whole KV cache each step (2 * layers * kv_heads * head_dim * 2 bytes per
token); prefill attention costs 4 * layers * heads * head_dim FLOPs per query-key pair.
Published peaks are scaled by assumed efficiencies (documented in docs/backends.md). With
`--gpu-bench`, the copy bandwidth measured by `parrot bench gpu` replaces the spec sheet's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace

from engine.sim.profile import CostProfile

BF16 = 2  # bytes


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    hbm_bytes_per_s: float  # spec sheet peak
    bf16_flops: float  # dense tensor-core peak
    memory_bytes: float


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    params: float
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    context_length: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * BF16


# NVIDIA A100 datasheet (SXM4 80GB): 2,039 GB/s HBM2e, 312 TFLOPS dense BF16.
GPUS = {"a100-80g": Gpu("a100-80g", 2.039e12, 312e12, 80e9)}
# Llama 2 paper (Touvron et al. 2023), table of model shapes: 7B 32x32 heads, 13B 40x40.
MODELS = {
    "llama-2-7b": ModelShape("llama-2-7b", 6.74e9, 32, 32, 32, 128, 4096),
    "llama-2-13b": ModelShape("llama-2-13b", 13.0e9, 40, 40, 40, 128, 4096),
}
ROWS = (1, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True, slots=True)
class Efficiency:
    bandwidth: float = 0.7  # achieved / peak HBM bandwidth (vLLM-class decode kernels)
    mfu: float = 0.55  # achieved / peak FLOPs for the dense layers of a large step
    attention_mfu: float = 0.5  # FlashAttention-2 forward on A100 reaches ~50-70% of peak
    step_overhead_s: float = 0.0015  # scheduler, sampling and launch time per step
    memory_utilization: float = 0.9  # vLLM's default gpu_memory_utilization


def roofline_profile(
    model: ModelShape, gpu: Gpu, eff: Efficiency = Efficiency(), name: str | None = None
) -> CostProfile:
    weights = model.params * BF16
    read_s = weights / (gpu.hbm_bytes_per_s * eff.bandwidth)
    per_row_s = 2 * model.params / (gpu.bf16_flops * eff.mfu)
    rows_s = tuple(max(read_s, rows * per_row_s) + eff.step_overhead_s for rows in ROWS)
    kv_room = gpu.memory_bytes * eff.memory_utilization - weights
    block_size = 16
    num_blocks = int(kv_room // (model.kv_bytes_per_token * block_size))
    attn_flops = 4 * model.layers * model.heads * model.head_dim
    return CostProfile(
        name=name or f"{gpu.name}-{model.name}",
        model=model.name,
        source=(
            f"engine.sim.roofline: {model.name} on {gpu.name}, "
            f"bandwidth x{eff.bandwidth}, MFU x{eff.mfu}, attention MFU x{eff.attention_mfu}, "
            f"{eff.step_overhead_s * 1e3:.1f} ms/step overhead"
        ),
        rows=ROWS,
        rows_s=rows_s,
        decode_attn_s_per_pair=model.kv_bytes_per_token / (gpu.hbm_bytes_per_s * eff.bandwidth),
        prefill_attn_s_per_pair=attn_flops / (gpu.bf16_flops * eff.attention_mfu),
        block_size=block_size,
        num_blocks=num_blocks,
        context_length=model.context_length,
        max_batch_size=256,  # vLLM's default max_num_seqs
        max_step_tokens=2048,  # a common chunked-prefill budget
        latency_cap=256,  # the engine does not cap; the gateway's scheduler does
    )


def from_gpu_bench(model: ModelShape, bench_json: str, gpu: Gpu = GPUS["a100-80g"]) -> CostProfile:
    """A profile whose bandwidth is the copy bandwidth `parrot bench gpu` measured."""
    with open(bench_json, encoding="utf-8") as f:
        measured = json.load(f)["copy_GBps"] * 1e9
    device = replace(gpu, name=f"measured-{gpu.name}", hbm_bytes_per_s=measured)
    return roofline_profile(model, device, replace(Efficiency(), bandwidth=1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.sim.roofline", description=__doc__)
    ap.add_argument("--model", choices=sorted(MODELS), default="llama-2-7b")
    ap.add_argument("--gpu", choices=sorted(GPUS), default="a100-80g")
    ap.add_argument("--gpu-bench", help="JSON written by `parrot bench gpu`")
    ap.add_argument("--name")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    model, gpu = MODELS[args.model], GPUS[args.gpu]
    if args.gpu_bench:
        profile = from_gpu_bench(model, args.gpu_bench, gpu)
    else:
        profile = roofline_profile(model, gpu, name=args.name)
    if args.out:
        profile.save(args.out)
    print(profile.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
