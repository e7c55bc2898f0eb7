"""Shared fixtures: the real embedded model (loaded once) and a tiny random-weight model."""

from __future__ import annotations

import pytest

from engine.builtin.config import tiny_config
from engine.builtin.model_files import (
    LoadedModel,
    embedded_model_path,
    load_model,
    random_weights,
)
from engine.builtin.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def embedded_model() -> LoadedModel:
    return load_model(None)


@pytest.fixture(scope="session")
def smol_tokenizer() -> Tokenizer:
    """The SmolLM2 tokenizer alone (metadata only, no weights dequantised)."""
    from engine.builtin.gguf_loader import load_gguf_tokenizer

    return load_gguf_tokenizer(embedded_model_path())


@pytest.fixture(scope="session")
def tiny_model(smol_tokenizer: Tokenizer) -> LoadedModel:
    """Random weights with a large embedding scale, so greedy picks are far from ties and
    batched vs. unbatched float32 runs must agree token for token."""
    config = tiny_config()
    weights = random_weights(config, seed=1)
    weights["model.embed_tokens.weight"] *= 50.0
    return LoadedModel(config=config, weights=weights, tokenizer=smol_tokenizer)
