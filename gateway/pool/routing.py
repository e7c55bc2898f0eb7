"""Prefix-affine routing policy: a pure function of engine loads and prefix-index holders.

Go to the engine holding the longest cached prefix of the prompt unless it is overloaded;
otherwise (or with no holder) go to the least-loaded engine. Ties break by rendezvous
hashing on the prompt's first block, so replicas that see equal loads pick the same engine
and distinct prefixes spread over equally loaded engines.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Literal, NamedTuple


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    max_waiting: int = 8  # an engine with this many queued requests takes no affine work
    max_imbalance: int = 16  # ...nor one this much busier than the least-loaded engine
    min_free_kv: float = 0.05  # ...nor one with less than this fraction of KV blocks free


@dataclass(frozen=True, slots=True)
class Load:
    """What routing knows of one engine (from its stats and this replica's in-flight count)."""

    engine_id: str
    running: int = 0
    waiting: int = 0
    free_kv: float = 1.0  # fraction of KV blocks free; 1.0 when the engine doesn't say

    @property
    def busy(self) -> int:
        return self.running + self.waiting


class Route(NamedTuple):
    engine_id: str
    reason: Literal["prefix", "least_loaded"]


def overloaded(load: Load, least_busy: int, policy: RoutingPolicy) -> bool:
    return (
        load.waiting >= policy.max_waiting
        or load.free_kv < policy.min_free_kv
        or load.busy - least_busy > policy.max_imbalance
    )


def _rendezvous(tie_key: bytes, engine_id: str) -> bytes:
    return blake2b(tie_key + engine_id.encode(), digest_size=8).digest()


def choose(
    loads: Sequence[Load],
    holders: Collection[str],
    policy: RoutingPolicy,
    tie_key: bytes = b"",
) -> Route:
    """Pick an engine for a prompt whose longest indexed prefix is held by `holders`."""
    if not loads:
        raise ValueError("no engines to choose from")
    if len(loads) == 1:
        only = loads[0]
        return Route(only.engine_id, "prefix" if only.engine_id in holders else "least_loaded")
    least_busy = min(load.busy for load in loads)
    affine = [
        load
        for load in loads
        if load.engine_id in holders and not overloaded(load, least_busy, policy)
    ]
    if affine:
        best = min(affine, key=lambda load: (load.busy, _rendezvous(tie_key, load.engine_id)))
        return Route(best.engine_id, "prefix")
    # Engines short of KV come last; among the rest the least busy, ties by rendezvous.
    best = min(
        loads,
        key=lambda load: (
            load.free_kv < policy.min_free_kv,
            load.busy,
            _rendezvous(tie_key, load.engine_id),
        ),
    )
    return Route(best.engine_id, "least_loaded")
