"""Fixtures for engine tests; the embedded model itself is loaded once in tests/conftest.py."""

from __future__ import annotations

import pytest

from engine.builtin.model_files import LoadedModel
from engine.builtin.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer(embedded_model: LoadedModel) -> Tokenizer:
    """The SmolLM2 tokenizer, taken from the shared model load instead of re-reading the file."""
    return embedded_model.tokenizer
