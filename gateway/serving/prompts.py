"""Prompts as token ids, with an LRU cache so repeated prompts are not re-rendered/re-tokenized.

Chat prompts are rendered by the engine's chat template and tokenized by the engine; both
depend only on the model, so the cache is keyed by (model, messages) or (model, text) and
shared by every engine serving that model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from engine.client import EngineClient
from engine.protocol import ChatMessage
from gateway.pool.prefix import block_hashes


class Prompt:
    """Token ids plus their block hashes, computed once per (block size, max blocks)."""

    __slots__ = ("_hashes", "_hashes_key", "token_ids")

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        self._hashes: list[bytes] = []
        self._hashes_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def block_hashes(self, block_size: int, max_blocks: int) -> list[bytes]:
        key = (block_size, max_blocks)
        if self._hashes_key != key:
            self._hashes = block_hashes(self.token_ids, block_size, max_blocks)
            self._hashes_key = key
        return self._hashes


class PromptCache:
    """LRU of prompts. Texts longer than `max_chars` are not kept (they'd crowd the cache)."""

    def __init__(self, capacity: int = 4096, max_chars: int = 64 * 1024) -> None:
        self._capacity = capacity
        self._max_chars = max_chars
        self._entries: OrderedDict[Hashable, Prompt] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _get(self, key: Hashable) -> Prompt | None:
        prompt = self._entries.get(key)
        if prompt is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return prompt

    def _put(self, key: Hashable, prompt: Prompt, chars: int) -> Prompt:
        if self._capacity > 0 and chars <= self._max_chars:
            self._entries[key] = prompt
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return prompt

    async def chat(
        self, engine: EngineClient, model: str, messages: Sequence[ChatMessage]
    ) -> Prompt:
        key = (model, "chat", tuple((m.role, m.content) for m in messages))
        prompt = self._get(key)
        if prompt is None:
            text = await engine.render_chat(messages, add_generation_prompt=True)
            # The template already wrote any BOS token into the text.
            ids = await engine.tokenize(text, add_special_tokens=False)
            prompt = self._put(key, Prompt(ids), len(text))
        return prompt

    async def text(self, engine: EngineClient, model: str, text: str) -> Prompt:
        key = (model, "text", text)
        prompt = self._get(key)
        if prompt is None:
            ids = await engine.tokenize(text, add_special_tokens=True)
            prompt = self._put(key, Prompt(ids), len(text))
        return prompt
