"""Which engines a gateway starts with: the local one (builtin or echo) and remote ones."""

from __future__ import annotations

from collections.abc import Callable

from engine.client import EngineClient
from engine.remote import RemoteEngine
from gateway.settings import Settings


def local_engines(settings: Settings) -> list[EngineClient]:
    """The in-process engine: none with `--no-local-engine`, EchoEngine with `--echo`,
    else the builtin PyTorch engine (imported only here: it pulls in torch)."""
    if not settings.local_engine:
        return []
    if settings.echo:
        from engine.echo import EchoEngine

        return [EchoEngine()]
    return [builtin_engine(settings)]


def builtin_engine(settings: Settings, engine_id: str = "builtin-0") -> EngineClient:
    from engine.builtin.factory import create_builtin_engine

    return create_builtin_engine(
        settings.model,
        engine_id=engine_id,
        device=settings.device,
        dtype=settings.dtype,
        kv_cache_mb=settings.kv_cache_mb,
        enable_prefix_cache=settings.prefix_cache,
        native_kernels=settings.native_kernels,
        num_threads=settings.threads,  # None: every core (torch's default)
        attention_threads=settings.attention_threads,
        wide_attention_context=settings.wide_attention_context,
        max_batch_size=settings.max_batch_size,
        max_step_tokens=settings.max_step_tokens,
        latency_cap=settings.latency_cap,
        latency_step_tokens=settings.latency_step_tokens,
        throughput_share=settings.throughput_share,
        followup_hold_s=settings.followup_hold_s,
        step_trace=settings.step_trace,
    )


def remote_connector(settings: Settings) -> Callable[[str], EngineClient]:
    """url -> RemoteEngine with the configured timeouts."""

    def connect(url: str) -> EngineClient:
        return RemoteEngine(
            url,
            connect_timeout_s=settings.engine_connect_timeout_s,
            read_timeout_s=settings.engine_read_timeout_s,
            health_timeout_s=settings.health_timeout_s,
        )

    return connect
