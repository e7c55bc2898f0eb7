"""Upstream completion logprobs -> Parrot's id-based `TokenLogprob`s.

OpenAI-compatible servers name tokens, they do not number them. Two namings are read:

- `token_id:<id>` (vLLM's and Parrot's `return_tokens_as_token_ids`): exact;
- plain text: mapped through the local tokenizer's vocabulary, and only where exactly one
  token id decodes to that text. Text that several ids share (a partial UTF-8 character
  decodes to U+FFFD; some vocabularies repeat entries), that no single id decodes to, or any
  text when only the upstream's `/tokenize` is available, raises `InvalidRequest` naming the
  token: a guessed id would be silently wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import InvalidRequest
from engine.openai.tokenizer import TextTokenizer
from engine.openai.wire import CompletionLogprobs
from engine.protocol import TokenLogprob, TopLogprob

TOKEN_ID = "token_id:"
_SHARED = -1  # in the reverse vocabulary: text that more than one id decodes to


def _unmappable(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"the upstream named a logprob token {name!r}, which {why}; ask an upstream that "
        "returns token ids (vLLM or Parrot, with sampling extensions on) or leave out logprobs",
        param="logprobs",
    )


class TokenNames:
    """Token names as the upstream writes them -> token ids."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: dict[str, int] | None = None  # text -> id, or _SHARED

    async def _vocabulary(self, size: int) -> dict[str, int]:
        if self._ids is None:
            ids: dict[str, int] = {}
            for token_id in range(size):
                text = await self._tokenizer.decode([token_id])
                ids[text] = _SHARED if text in ids else token_id
            self._ids = ids
        return self._ids

    async def id_of(self, name: str) -> int:
        if name.startswith(TOKEN_ID):
            try:
                return int(name[len(TOKEN_ID) :])
            except ValueError:
                raise _unmappable(name, "is not a token id") from None
        size = self._tokenizer.vocab_size
        if size is None:
            raise _unmappable(name, "is text, and only a local tokenizer maps text to ids")
        token_id = (await self._vocabulary(size)).get(name)
        if token_id is None:
            raise _unmappable(name, "no single token id decodes to")
        if token_id == _SHARED:
            raise _unmappable(name, "several token ids decode to")
        return token_id

    async def logprobs(
        self, upstream: CompletionLogprobs, k: int, sampled: Sequence[int] | None = None
    ) -> list[TokenLogprob]:
        """One `TokenLogprob` per position with the `k` most likely alternatives. `sampled`:
        the sampled ids where the upstream reported them (then only alternatives are mapped).
        """
        if sampled is not None and len(sampled) != len(upstream.tokens):
            sampled = None
        tops = upstream.top_logprobs or []
        result = []
        for i, name in enumerate(upstream.tokens):
            logprob = upstream.token_logprobs[i] if i < len(upstream.token_logprobs) else None
            if logprob is None:
                raise _unmappable(name, "came without a logprob")
            token_id = sampled[i] if sampled is not None else await self.id_of(name)
            top: list[TopLogprob] = []
            if k:
                named = (tops[i] if i < len(tops) else None) or {}
                # vLLM lists the sampled token too: when it is not among the k most likely
                # it is the least likely entry, and the cut drops it.
                ranked = sorted(named.items(), key=lambda item: -item[1])[:k]
                top = [TopLogprob(await self.id_of(n), value) for n, value in ranked]
            result.append(TokenLogprob(token_id, logprob, top))
        return result
