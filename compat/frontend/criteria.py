"""Performance criteria a program attaches to the values it waits for."""

from __future__ import annotations

import enum


class PerformanceCriteria(enum.StrEnum):
    """What the application wants for a value: to get it soon, or to get much work done."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"


LATENCY = PerformanceCriteria.LATENCY
THROUGHPUT = PerformanceCriteria.THROUGHPUT
