"""Typed errors of the Parrot core; each is an `ApiError`, so the app maps it to an OpenAI body."""

from __future__ import annotations

from gateway.errors import ApiError


class CoreError(ApiError):
    """Base class of the semantic-variable API's own failures."""


class TemplateError(CoreError):
    """A template (or chat form) that cannot be parsed or bound: 400 naming the problem."""

    def __init__(self, message: str, param: str | None = "template") -> None:
        super().__init__(400, message, param=param, code="invalid_template")


class GraphError(CoreError):
    """A call that would break the graph: unknown variables, cycles, a second producer."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_graph") -> None:
        super().__init__(400, message, param=param, code=code)


class SessionNotFound(CoreError):
    def __init__(self, session_id: str) -> None:
        super().__init__(
            404,
            f"No session '{session_id}': it does not exist, has expired or is not yours.",
            param="session_id",
            code="session_not_found",
        )


class VariableNotFound(CoreError):
    def __init__(self, variable_id: str) -> None:
        super().__init__(
            404,
            f"No variable '{variable_id}' in this session.",
            param="variable_id",
            code="variable_not_found",
        )


class VariableConflict(CoreError):
    """Setting a variable that a call produces, or one that already has a value."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message, type="conflict_error", param="value", code="variable_set")


class CallFailed(CoreError):
    """Why a variable failed: the producing call's error, or a failed input upstream.

    Keeps the root cause's status and code, so a GET of any variable downstream of a
    failure answers like the request that actually failed would have.
    """

    def __init__(self, status: int, message: str, code: str | None, kind: str) -> None:
        super().__init__(status, message, type=kind, code=code, param=None)

    @classmethod
    def wrap(cls, error: ApiError, prefix: str) -> CallFailed:
        return cls(error.status, f"{prefix}: {error.message}", error.code, error.type)


def failure_type(status: int) -> str:
    """OpenAI's error type for a status (what a failed variable's record does not keep)."""
    if status >= 500:
        return "server_error"
    return "conflict_error" if status == 409 else "invalid_request_error"
