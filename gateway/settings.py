"""Gateway settings: defaults < TOML file < `PARROT_*` environment variables < CLI flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

ENV_PREFIX = "PARROT_"


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything `parrot serve` can be told. Field names are the TOML keys; the environment
    variable of `engine_urls` is `PARROT_ENGINE_URLS` (lists there are comma-separated)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # engines
    model: str | None = None  # builtin engine weights; None = the embedded SmolLM2
    echo: bool = False  # the local engine is the model-free EchoEngine (benchmarks, demos)
    local_engine: bool = True
    # builtin engine (local, or `parrot engine`): see engine/builtin/options.py
    device: str = "cpu"
    dtype: str = "bfloat16"
    kv_cache_mb: int = 2048
    prefix_cache: bool = True  # the engine's automatic block-hash prefix cache
    native_kernels: bool = True  # CPU attention, layer ops, decode matmuls in C where built
    max_batch_size: int = 64
    max_step_tokens: int = 512
    latency_cap: int = 64  # max sequences stepped while latency-critical work is live
    latency_step_tokens: int = 128  # a step holding throughput work while latency is live
    throughput_share: float = 0.1  # of recent step time, throughput's while latency is live
    followup_hold_s: float = 0.05  # throughput waits this long for a latency follow-up
    threads: int | None = None  # None: all cores (torch's default)
    attention_threads: int | None = None  # long-context attention; None: all cores
    wide_attention_context: int = 2048  # mean keys per token (engine/builtin/threads.py)
    step_trace: str | None = None  # a JSON line per engine step, for profiling
    engine_urls: tuple[str, ...] = ()
    # state
    redis_url: str | None = None
    session_idle_ttl_s: float = 3600.0
    # auth and limits
    api_keys: tuple[str, ...] = ()
    keys_file: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    rate_limit_per_minute: int | None = None  # per tenant; None = unlimited
    # engine pool
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0
    unhealthy_after: int = 2  # consecutive failed checks
    engine_connect_timeout_s: float = 2.0
    engine_read_timeout_s: float = 300.0
    retry_after_s: int = 1
    # routing
    prefix_max_blocks: int = 64
    prefix_ttl_s: float = 600.0
    route_max_waiting: int = 8
    route_max_imbalance: int = 16
    route_min_free_kv: float = 0.05
    # serving
    prompt_cache_size: int = 4096
    log_level: str = "info"


_LIST_FIELDS = {"engine_urls", "api_keys"}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.__struct_fields__:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name in _LIST_FIELDS:
            values[name] = [part.strip() for part in raw.split(",") if part.strip()]
        else:
            values[name] = raw
    return values


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources; `overrides` are CLI flags (None values mean "not given")."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    if config_file:
        with Path(config_file).open("rb") as f:
            merged.update(tomllib.load(f))
    merged.update(_from_env(env))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        # strict=False: environment values arrive as strings ("8000", "true").
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid settings: {exc}") from exc
