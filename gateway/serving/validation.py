"""Request checks shared by the OpenAI routes: body decoding and sampling validation."""

from __future__ import annotations

from typing import Protocol, TypeVar

import msgspec

from engine.errors import InvalidRequest
from engine.protocol import EngineInfo, SamplingParams
from gateway.errors import bad_request, from_decode, from_validation, unsupported

T = TypeVar("T")


class _UsesPenalties(Protocol):
    @property
    def uses_penalties(self) -> bool: ...


def decode(decoder: msgspec.json.Decoder[T], raw: bytes) -> T:
    """Decode a JSON body; every failure is a 400 naming the field where msgspec knows it."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from exc
    except msgspec.DecodeError as exc:
        raise from_decode(exc) from exc


def check_sampling(
    body: _UsesPenalties, sampling: SamplingParams, info: EngineInfo
) -> SamplingParams:
    """Validate against the engine's limits here, so a bad value is a 400 before routing."""
    if body.uses_penalties and not info.supports_penalties:
        raise unsupported(
            "presence_penalty", f"presence/frequency penalties on '{info.model}' ({info.backend})"
        )
    try:
        sampling.validate(info.vocab_size)
    except InvalidRequest as exc:
        raise bad_request(exc.message, param=exc.param, code="invalid_value") from exc
    return sampling
