"""`CoreConfig`: the Parrot core's knobs (frozen), with defaults that suit one CPU engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoreConfig:
    # sessions
    session_idle_ttl_s: float = 3600.0  # a session untouched this long expires
    reap_interval_s: float = 5.0  # how often expired sessions' engine contexts are freed
    max_wait_s: float = 3600.0  # the longest a GET may block
    # admission: a session's burst of submissions is looked at as a whole before dispatch,
    # so a GET right after the submissions still sets objectives and groups form
    admission_quiet_s: float = 0.005  # dispatch once a session was quiet this long...
    admission_max_hold_s: float = 0.05  # ...or a ready call waited this long
    # scheduling
    # Latency calls per engine at first, and at most. The cap starts open and halves while
    # measured per-token latency exceeds the target: starting at the paper's 4 made a burst of
    # latency-critical calls queue in the gateway although batching them was cheaper (CPU).
    latency_cap: int = 32
    latency_cap_max: int = 32
    latency_target_s_per_token: float = 0.1  # the cap adapts to this; 0 keeps it fixed
    max_kv_fill: float = 0.9  # place work while its estimated KV stays under this fraction
    max_attempts: int = 3  # a call is re-placed after an engine drops, this many times
    # contexts and prefix sharing
    share_prefixes: bool = True
    min_prefix_tokens: int = 32  # a shorter leading text is not worth its own context
    retain_call_contexts: bool = True  # keep finished calls' contexts for later forks
    max_retained_per_session: int = 8
    idle_kv_fraction: float = 0.3  # idle (unreferenced) contexts may hold this much KV
    max_idle_contexts: int = 128  # ...and at most this many per engine
    prefix_idle_ttl_s: float = 600.0  # an idle shared prefix older than this is freed
