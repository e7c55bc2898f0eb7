"""Process-level CPU settings for the engine's steps.

- Allocations: a decode step allocates many megabyte-sized temporaries (gathered KV,
  activations). glibc serves allocations above its mmap threshold with fresh mmap'd pages,
  so each step pays thousands of page faults; raising the threshold and disabling heap
  trimming lets freed memory be reused instead. Measured on a 2-core CPU: a 4 MB KV gather
  went from 2.7 ms to 0.5 ms.
- OpenMP teams: torch's CPU ops and the C kernels run their parallel parts on OpenMP teams,
  and GNU OpenMP keeps one team of worker threads per thread that ever started a parallel
  region. The engine builds its model and KV cache on the caller's thread and steps on its
  own, so a process held two teams; once a process holds more OpenMP threads than it has
  cores, GNU OpenMP lets idle workers spin only briefly before they sleep, and every parallel
  region of a step then waits for a sleeping worker to be woken. On a 2-core VM an empty
  two-thread region took 42-90 us on the step thread against about 1 us once the caller's
  team was released (docs/BENCHMARKS.md, "Engine threads when serving").
  `release_openmp_team` ends the calling thread's team (its workers exit); a later parallel
  region on that thread starts a new one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 1 << 30) -> bool:
    """Best effort; returns whether glibc accepted the settings (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, mmap_threshold) == 1 and ok
    except (OSError, AttributeError):
        return False
    if not ok:
        log.debug("mallopt rejected the allocator settings")
    return ok


_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t (OpenMP 5.0)


def release_openmp_team() -> bool:
    """Best effort: ends the calling thread's GNU OpenMP worker threads, where the process
    has libgomp loaded (torch's CPU builds on Linux) and it implements OpenMP 5.0's
    `omp_pause_resource_all`. Returns whether it did; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:  # only the copy already loaded (torch's own), never a second runtime
        gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    except OSError:
        return False
    pause = getattr(gomp, "omp_pause_resource_all", None)
    if pause is None:
        return False
    pause.restype, pause.argtypes = ctypes.c_int, [ctypes.c_int]
    return pause(_OMP_PAUSE_SOFT) == 0
