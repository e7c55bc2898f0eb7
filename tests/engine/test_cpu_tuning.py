"""Process-level CPU settings: the OpenMP team a thread leaves behind, and its release."""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

from engine.builtin.cpu_tuning import release_openmp_team
from engine.protocol import FillRequest
from tests.engine.test_builtin_engine import make_engine


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _settle(want, timeout_s: float = 2.0) -> int:
    """The process's thread count once `want(count)` holds (workers exit asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while not want(n := _tasks()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def _parallel_op() -> None:
    torch.ones(1 << 22).sum()  # 4M elements: split over every torch thread


def _gomp_team_here() -> bool:
    """Whether torch runs on GNU OpenMP with more than one thread in this process."""
    with open("/proc/self/maps") as f:
        gomp = "libgomp" in f.read()
    return gomp and torch.get_num_threads() > 1


needs_gomp = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _gomp_team_here(),
    reason="torch does not run a GNU OpenMP team of several threads here",
)


@needs_gomp
def test_release_ends_the_calling_threads_workers_and_a_later_region_starts_anew():
    _parallel_op()  # this thread's team exists now, whatever ran before
    before = _tasks()
    assert release_openmp_team()
    workers = torch.get_num_threads() - 1
    assert _settle(lambda n: n <= before - workers) == before - workers
    _parallel_op()
    assert _settle(lambda n: n >= before) == before


@needs_gomp
async def test_starting_the_engine_releases_the_team_its_construction_left(tiny_model):
    """The engine is built on this thread (its team exists then) and steps on its own; once
    started, this thread's workers are gone and only the engine's thread was added."""
    engine = make_engine(tiny_model, dtype="bfloat16")
    _parallel_op()
    built = _tasks()
    await engine.start()
    try:
        workers = torch.get_num_threads() - 1
        assert _settle(lambda n: n <= built + 1 - workers) == built + 1 - workers
        # The engine's own thread keeps stepping (and starts its own team).
        done = await engine.fill(FillRequest(context_id="c", token_ids=list(range(100, 140))))
        assert done.num_tokens == 40
    finally:
        await engine.close()
