"""A virtual-time asyncio event loop: simulated sleeps take no wall time.

Whenever every task is waiting on a timer, the loop jumps its clock to the earliest timer
instead of sleeping, so `SimEngine`s (which sleep their simulated step times) and any async
driver written against `EngineClient` run as fast as the CPU allows while `loop.time()`
reads simulated seconds. Only in-process work fits: real sockets still work but their wait
is not simulated, and a loop with nothing scheduled at all is a deadlock.

It hooks the loop's selector (`_selector`, a CPython internal stable since 3.4): the loop
asks the selector to wait `timeout` seconds exactly when nothing is ready.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClockDeadlock(RuntimeError):
    """Every task waits, and on nothing that could ever happen."""


class _VirtualSelector:
    def __init__(self, loop: VirtualTimeLoop, real: selectors.BaseSelector) -> None:
        self._loop = loop
        self._real = real

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._real.select(0)  # the self-pipe of call_soon_threadsafe, if anything
        if events or timeout == 0:
            return events
        if timeout is None:
            raise VirtualClockDeadlock("all tasks wait and no timer is scheduled")
        self._loop.advance(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _VirtualSelector(self, self._selector)  # type: ignore[has-type]

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(seconds, 0.0)


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
