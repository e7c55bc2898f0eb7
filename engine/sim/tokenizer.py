"""`SimTokenizer`: a deterministic word-level tokenizer for the model-free simulated engine.

Token counts are what the simulator costs, so any stable text -> ids mapping will do: each
word (with its leading space) or punctuation mark is one token, its id a CRC of the text.
Decoding returns the words seen by `encode` (a bounded table); generated tokens come from a
small fixed filler vocabulary.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Sequence

VOCAB_SIZE = 32000
FILLER = (" squawk", " polly", " seed", " feather", " perch", " cracker", ".", " wing")
FIRST_WORD_ID = 256  # ids below are reserved: the filler words and control tokens
_PIECES = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")


class SimTokenizer:
    def __init__(self, table_size: int = 1 << 16) -> None:
        self._words: OrderedDict[int, str] = OrderedDict()
        self._table_size = table_size

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _PIECES.findall(text):
            token = FIRST_WORD_ID + zlib.crc32(piece.encode()) % (VOCAB_SIZE - FIRST_WORD_ID)
            self._words[token] = piece
            self._words.move_to_end(token)
            ids.append(token)
        while len(self._words) > self._table_size:
            self._words.popitem(last=False)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        parts = []
        for token in token_ids:
            if token < len(FILLER):
                parts.append(FILLER[token])
            else:
                parts.append(self._words.get(token, " <unk>"))
        return "".join(parts)

    @staticmethod
    def filler(index: int) -> int:
        """The id of the `index`-th generated token."""
        return index % len(FILLER)

    def render_chat(self, messages: Sequence, add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|{m.role}|> {m.content}\n" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")
