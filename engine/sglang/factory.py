"""Builds an `SGLangEngine` from command-line style options (`parrot engine --backend sglang`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from engine.openai.factory import local_tokenizer
from engine.sglang.config import SGLangConfig
from engine.sglang.engine import SGLangEngine


def runtime_args(pairs: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """`KEY=VALUE` options for SGLang's ServerArgs; values are JSON where they parse as JSON
    (`tp_size=2`, `enable_priority_scheduling=true`), strings otherwise."""
    args = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"an SGLang runtime option must be KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        args.append((key.replace("-", "_"), value))
    return tuple(args)


def create_sglang_engine(
    url: str | None = None,
    *,
    model_path: str | None = None,
    runtime_options: Sequence[str] = (),
    model: str | None = None,
    tokenizer: str | None = None,
    context_length: int | None = None,
    send_priority: bool = False,
    priority_lower_first: bool = False,
    engine_id: str | None = None,
) -> SGLangEngine:
    """A launched server at `url`, or (with `model_path`) an SGLang runtime in this process."""
    config = SGLangConfig(
        url=url,
        model_path=model_path,
        runtime_args=runtime_args(runtime_options),
        model=model,
        engine_id=engine_id,
        context_length=context_length,
        send_priority=send_priority,
        higher_priority_first=not priority_lower_first,
    )
    return SGLangEngine(config, local_tokenizer(tokenizer))
