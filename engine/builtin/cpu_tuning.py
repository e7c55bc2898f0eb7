"""Process-level CPU settings that make PyTorch's per-step temporaries cheap.

A decode step allocates many megabyte-sized temporaries (gathered KV, activations).
glibc serves allocations above its mmap threshold with fresh mmap'd pages, so each step
pays thousands of page faults; raising the threshold and disabling heap trimming lets
freed memory be reused instead. Measured on a 2-core CPU: a 4 MB KV gather went from
2.7 ms to 0.5 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
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
