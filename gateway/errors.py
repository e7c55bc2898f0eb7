"""The gateway's one error type, its OpenAI-shaped body, and the mapping from other failures."""

from __future__ import annotations

import re

import msgspec

from engine.errors import EngineError


class ErrorDetail(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, frozen=True):
    """`{"error": {"message", "type", "param", "code"}}`, exactly as OpenAI sends it."""

    error: ErrorDetail


class ApiError(Exception):
    """Any failure a client sees: HTTP `status`, and `type`/`code` as OpenAI names them."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> ErrorBody:
        return ErrorBody(ErrorDetail(self.message, self.type, self.param, self.code))


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unsupported(param: str, what: str) -> ApiError:
    return ApiError(400, f"'{param}': {what} is not supported", param=param, code="unsupported")


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def context_length_exceeded(
    limit: int, prompt: int, completion: int, param: str = "messages"
) -> ApiError:
    return ApiError(
        400,
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
        "completion). Please reduce the length of the messages or completion.",
        param=param,
        code="context_length_exceeded",
    )


def no_engine(model: str, retry_after_s: int) -> ApiError:
    return ApiError(
        503,
        f"No healthy engine is serving '{model}' right now; retry shortly.",
        type="server_error",
        code="engine_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")


# engine error code -> (OpenAI error type) for statuses the client should see as its own fault.
_CLIENT_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 409: "conflict_error"}


def from_engine(exc: EngineError) -> ApiError:
    """An engine's typed error as the client should see it (5xx hide no detail but the code)."""
    if exc.status < 500 and exc.status != 499:
        kind = _CLIENT_TYPES.get(exc.status, "invalid_request_error")
        return ApiError(exc.status, exc.message, type=kind, code=exc.code, param=exc.param)
    status = 500 if exc.status == 499 else exc.status
    headers = {"Retry-After": "1"} if status == 503 else None
    return ApiError(status, exc.message, type="server_error", code=exc.code, headers=headers)


_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_WRONG_TYPE = re.compile(r"^Expected `[^`]+`, got `")  # not "Expected `int` >= 1": a value
_AT = re.compile(r" - at `\$(.*)`$")


def validation_param(message: str) -> str | None:
    """Turn msgspec's `... - at `$.messages[0].role`` into OpenAI's param `messages[0].role`."""
    path = ""
    if match := _AT.search(message):
        path = match.group(1)
    if missing := _MISSING.match(message):
        path = f"{path}.{missing.group(1)}"
    return path.lstrip(".") or None


def from_validation(exc: msgspec.ValidationError) -> ApiError:
    message = str(exc)
    param = validation_param(message)
    text = _AT.sub("", message)
    code = "missing_required_parameter" if _MISSING.match(message) else "invalid_value"
    if _WRONG_TYPE.match(text):
        code = "invalid_type"
    where = f" at '{param}'" if param and not _MISSING.match(message) else ""
    return bad_request(f"Invalid request: {text}{where}.", param=param, code=code)


def from_decode(exc: msgspec.DecodeError) -> ApiError:
    return bad_request(
        f"We could not parse the JSON body of your request ({exc}). The body must be valid JSON.",
        code="invalid_json",
    )
