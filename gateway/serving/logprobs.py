"""Engine token logprobs -> OpenAI's chat and completions logprob objects.

Engines report token ids; OpenAI reports token strings, so single-token strings are looked
up once per (model, token id) and cached. With vLLM's `return_tokens_as_token_ids` a token
is named `token_id:<id>` instead, which an upstream client can map back exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from engine.protocol import TokenLogprob as EngineLogprob
from gateway.protocol.responses import (
    ChoiceLogprobs,
    CompletionLogprobs,
    TokenLogprob,
    TopLogprob,
)

Detokenize = Callable[[list[int]], Awaitable[str]]


class TokenTexts:
    """(model, token id) -> the token's text, filled on demand."""

    def __init__(self, capacity: int = 500_000) -> None:
        self._texts: dict[tuple[str, int], str] = {}
        self._capacity = capacity

    async def lookup(
        self, model: str, logprobs: Sequence[EngineLogprob], detokenize: Detokenize
    ) -> dict[int, str]:
        ids = {lp.token_id for lp in logprobs} | {t.token_id for lp in logprobs for t in lp.top}
        missing = [t for t in ids if (model, t) not in self._texts]
        if missing:
            texts = await asyncio.gather(*(detokenize([t]) for t in missing))
            if len(self._texts) + len(missing) > self._capacity:
                self._texts.clear()
            self._texts.update({(model, t): text for t, text in zip(missing, texts, strict=True)})
        return {t: self._texts[(model, t)] for t in ids}


def id_names(logprobs: Sequence[EngineLogprob]) -> dict[int, str]:
    """vLLM's `return_tokens_as_token_ids` naming: exact where token texts are ambiguous."""
    ids = {lp.token_id for lp in logprobs} | {t.token_id for lp in logprobs for t in lp.top}
    return {t: f"token_id:{t}" for t in ids}


def chat_logprobs(logprobs: Sequence[EngineLogprob], texts: dict[int, str]) -> ChoiceLogprobs:
    content = []
    for lp in logprobs:
        token = texts[lp.token_id]
        top = [
            TopLogprob(texts[t.token_id], t.logprob, list(texts[t.token_id].encode()))
            for t in lp.top
        ]
        content.append(TokenLogprob(token, lp.logprob, list(token.encode()), top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(
    logprobs: Sequence[EngineLogprob], texts: dict[int, str], offset: int = 0
) -> CompletionLogprobs:
    """`offset`: characters of text before these tokens (for `text_offset`)."""
    tokens, values, tops, offsets = [], [], [], []
    for lp in logprobs:
        token = texts[lp.token_id]
        tokens.append(token)
        values.append(lp.logprob)
        tops.append({texts[t.token_id]: t.logprob for t in lp.top})
        offsets.append(offset)
        offset += len(token)
    return CompletionLogprobs(tokens, values, tops, offsets)
