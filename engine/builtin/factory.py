"""Builds a BuiltinEngine from a model path (None: the embedded SmolLM2) and options."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.builtin.engine import BuiltinEngine
from engine.builtin.model_files import load_model
from engine.builtin.options import EngineOptions
from engine.builtin.scheduler import SchedulerConfig


def create_builtin_engine(model_path: str | None = None, **options: Any) -> BuiltinEngine:
    """Load the model and build an engine. Unknown option names raise TypeError.

    Scheduler settings may be given flat (max_batch_size=..., latency_cap=...).
    """
    sched_fields = {f.name for f in dataclasses.fields(SchedulerConfig)}
    sched = {k: options.pop(k) for k in list(options) if k in sched_fields}
    if sched:
        options["scheduler"] = SchedulerConfig(**sched)
    return BuiltinEngine(load_model(model_path), EngineOptions(**options))
