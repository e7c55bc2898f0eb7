"""Builds the upstream engines from command-line style options (`parrot engine --backend`)."""

from __future__ import annotations

import os

from engine.openai.config import PriorityMapping, UpstreamConfig
from engine.openai.engine import OpenAIEngine
from engine.openai.tokenizer import TextTokenizer, load_local_tokenizer

API_KEY_ENV = "PARROT_UPSTREAM_API_KEY"  # keys stay out of command lines and process lists


def local_tokenizer(path: str | None) -> TextTokenizer | None:
    """None: use the upstream's /tokenize; "embedded": SmolLM2's; else a .gguf or HF dir."""
    if path is None:
        return None
    return load_local_tokenizer(None if path == "embedded" else path)


def create_openai_engine(
    upstream: str,
    *,
    model: str | None = None,
    tokenizer: str | None = None,
    context_length: int | None = None,
    priority_field: str | None = None,
    priority_lower_first: bool = False,
    parrot_extension: bool = False,
    engine_id: str | None = None,
) -> OpenAIEngine:
    base = upstream.rstrip("/")
    config = UpstreamConfig(
        base_url=base if base.endswith("/v1") else f"{base}/v1",
        model=model,
        api_key=os.environ.get(API_KEY_ENV),
        engine_id=engine_id,
        context_length=context_length,
        priority=PriorityMapping(priority_field, higher_first=not priority_lower_first),
        parrot_extension=parrot_extension,
    )
    return OpenAIEngine(config, local_tokenizer(tokenizer))
