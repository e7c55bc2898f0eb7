"""Typed engine errors; every bad input or resource failure raises one of these."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. `code` is a stable machine-readable name carried over the wire."""

    code = "engine_error"
    status = 500

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(EngineError):
    """Bad sampling values, empty prompts and other malformed requests."""

    code = "invalid_request"
    status = 400


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnknownContext(EngineError):
    code = "context_not_found"
    status = 404


class ContextExists(EngineError):
    code = "context_exists"
    status = 409


class ContextBusy(EngineError):
    """A context is being generated into, or still has live children, so it can't change."""

    code = "context_busy"
    status = 409


class OutOfBlocks(EngineError):
    """The request cannot fit in the KV cache even when it runs alone."""

    code = "kv_cache_exhausted"
    status = 503


class EngineUnavailable(EngineError):
    """The engine is unreachable, shut down or failed; the caller may retry elsewhere."""

    code = "engine_unavailable"
    status = 503


class RequestAborted(EngineError):
    code = "request_aborted"
    status = 499


ERRORS_BY_CODE: dict[str, type[EngineError]] = {
    cls.code: cls
    for cls in (
        EngineError,
        InvalidRequest,
        ContextLengthExceeded,
        UnknownContext,
        ContextExists,
        ContextBusy,
        OutOfBlocks,
        EngineUnavailable,
        RequestAborted,
    )
}


def error_from_wire(code: str, message: str, param: str | None = None) -> EngineError:
    """Rebuild a typed error received from a remote engine."""
    return ERRORS_BY_CODE.get(code, EngineError)(message, param)
