"""What engines that replay token histories to an upstream server share: the tokenizer
front, token-id checks, the history table, and one HTTP call with error mapping."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from engine.errors import EngineUnavailable, InvalidRequest
from engine.openai.errors import upstream_error
from engine.openai.history import HistoryTable
from engine.openai.tokenizer import TextTokenizer
from engine.protocol import ChatMessage, EngineInfo


async def send(
    client: httpx.AsyncClient, method: str, url: str, what: str, content: bytes | None = None
) -> httpx.Response:
    """One request; an unreachable server is EngineUnavailable, an error status is typed."""
    try:
        response = await client.request(method, url, content=content)
    except httpx.TransportError as exc:
        raise EngineUnavailable(f"{what} {url} unreachable: {exc}") from exc
    if response.status_code >= 400:
        raise upstream_error(url, response.status_code, response.content)
    return response


class ReplayFront:
    """Mixin: needs `_tokenizer`, `_histories`, the `info` property and `_where` (a label
    such as "upstream http://..."), all set once the server has been reached in start()."""

    _tokenizer: TextTokenizer | None
    _histories: HistoryTable | None
    _where: str

    @property
    def info(self) -> EngineInfo:
        raise NotImplementedError

    def _unreached(self) -> EngineUnavailable:
        return EngineUnavailable(f"{self._where} has not been reached yet")

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            raise self._unreached()
        return self._tokenizer

    @property
    def histories(self) -> HistoryTable:
        if self._histories is None:
            raise self._unreached()
        return self._histories

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return await self.tokenizer.encode(text, add_special_tokens)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        return await self.tokenizer.decode(token_ids)

    async def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        return await self.tokenizer.render_chat(messages, add_generation_prompt)

    async def _tokens(self, token_ids: list[int] | None, text: str | None) -> list[int]:
        if token_ids is not None and text is not None:
            raise InvalidRequest("give token ids or text, not both")
        if text is not None:
            return await self.tokenizer.encode(text)
        tokens = list(token_ids or [])
        vocab = self.info.vocab_size
        if any(not 0 <= t < vocab for t in tokens):
            raise InvalidRequest(f"token ids must be in [0, {vocab})", param="token_ids")
        return tokens
