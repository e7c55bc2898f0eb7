"""Server-sent events as the OpenAI streams send them: `data: <json>` lines, `[DONE]` last."""

from __future__ import annotations

from collections.abc import AsyncIterator

DONE = b"[DONE]"


async def data_events(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """The payload of each `data:` field; stops at `[DONE]`. Comments and blanks are skipped.

    Each payload is one JSON document on one line, as every OpenAI-compatible server sends
    it, so multi-line `data:` continuation is not needed.
    """
    async for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip().encode()
        if payload == DONE:
            return
        if payload:
            yield payload
