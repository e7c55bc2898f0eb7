"""The frontend's error: an API error answered by the Parrot server, in OpenAI's shape."""

from __future__ import annotations

from typing import Any


class ParrotError(Exception):
    """`status` is the HTTP status; `code`, `type` and `param` come from the error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code or type or 'error'}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.param = param

    @classmethod
    def from_response(cls, status: int, body: Any) -> ParrotError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(status, str(body)[:500])
        return cls(
            status,
            str(error.get("message", "")),
            error.get("code"),
            error.get("type"),
            error.get("param"),
        )
