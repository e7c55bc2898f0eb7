"""Parrot's Python frontend: `@SemanticFunction`, `SemanticVariable`, `.get(perf=LATENCY)`.

import compat.frontend as P
from compat.frontend import LATENCY
"""

from compat.frontend.criteria import LATENCY, THROUGHPUT, PerformanceCriteria
from compat.frontend.errors import ParrotError
from compat.frontend.functions import SemanticFunction
from compat.frontend.session import Session, current
from compat.frontend.variables import SemanticVariable

__all__ = [
    "LATENCY",
    "THROUGHPUT",
    "ParrotError",
    "PerformanceCriteria",
    "SemanticFunction",
    "SemanticVariable",
    "Session",
    "current",
]
