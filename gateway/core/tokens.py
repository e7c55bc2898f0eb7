"""Token ids of template text, literals and variable values, cached per model.

Template text repeats across calls (the same function called many times), so its token
ids are kept in an LRU keyed by (model, text, add_special_tokens). Variable values keep
their ids on the variable itself (`Variable.token_ids`), exact when generated.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.client import EngineClient

_Key = tuple[str, str, bool]


class TokenCache:
    def __init__(self, capacity: int = 4096, max_chars: int = 256 * 1024) -> None:
        self._capacity = capacity
        self._max_chars = max_chars
        self._entries: OrderedDict[_Key, list[int]] = OrderedDict()

    async def encode(self, engine: EngineClient, model: str, text: str, special: bool) -> list[int]:
        if not text:
            return []
        key = (model, text, special)
        ids = self._entries.get(key)
        if ids is not None:
            self._entries.move_to_end(key)
            return ids
        ids = await engine.tokenize(text, add_special_tokens=special)
        if len(text) <= self._max_chars:
            self._entries[key] = ids
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return ids
