"""Builds an `SGLangEngine` from command-line style options (`parrot engine --backend sglang`)."""

from __future__ import annotations

from engine.openai.factory import local_tokenizer
from engine.sglang.config import SGLangConfig
from engine.sglang.engine import SGLangEngine


def create_sglang_engine(
    url: str,
    *,
    model: str | None = None,
    tokenizer: str | None = None,
    context_length: int | None = None,
    send_priority: bool = False,
    priority_lower_first: bool = False,
    engine_id: str | None = None,
) -> SGLangEngine:
    config = SGLangConfig(
        url=url,
        model=model,
        engine_id=engine_id,
        context_length=context_length,
        send_priority=send_priority,
        higher_priority_first=not priority_lower_first,
    )
    return SGLangEngine(config, local_tokenizer(tokenizer))
