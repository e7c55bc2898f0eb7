"""Errors raised by the builtin engine's model-file layer."""

from __future__ import annotations

from engine.errors import EngineError, InvalidRequest


class ModelLoadError(EngineError):
    """A model file is missing, malformed, or describes something this engine cannot run."""

    code = "model_load_error"
    status = 500


class ChatTemplateError(InvalidRequest):
    """The chat template rejected the conversation (e.g. roles that do not alternate)."""
