"""Settings of one builtin engine (frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.builtin.scheduler import SchedulerConfig


@dataclass(frozen=True, slots=True)
class EngineOptions:
    engine_id: str = "builtin-0"
    model_name: str | None = None  # the name served to clients; default: from the model file
    dtype: str = "bfloat16"  # bfloat16 | float16 | float32
    device: str = "cpu"
    block_size: int = 16
    num_blocks: int | None = None  # default: from kv_cache_mb
    kv_cache_mb: int = 2048
    enable_prefix_cache: bool = True
    # Shared-prefix attention groups; on CPU also the C shared-prefix kernel as a whole (which
    # takes those groups and short prefill chunks).
    share_prefix_attention: bool = True
    native_kernels: bool = True  # CPU attention, layer ops, matmuls in C (parrot_kernels/native.py)
    q4_max_rows: int = 4  # steps of at most this many tokens use 4-bit weights (0: never)
    # Steps of at most this many tokens use the AMX tile matmul where it built (0: never).
    tile_max_rows: int = 64
    num_threads: int | None = None  # torch intra-op threads; default: all cores
    # Attention of steps whose tokens attend to `wide_attention_context` keys or more on
    # average runs on `attention_threads` (default: all cores), where that is more than
    # num_threads (engine/builtin/threads.py).
    attention_threads: int | None = None
    wide_attention_context: int = 2048
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    seed: int = 0
    step_trace: str | None = None  # a JSON-lines file of every step (engine/builtin/step_trace.py)
