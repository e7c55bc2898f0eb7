"""Chained hashes of a prompt's leading token blocks: the keys of the shared prefix index.

    tokens   [t0 .. t15][t16 .. t31][t32 .. t47][t48 t49]
    hashes   h0 = H(block0)   h1 = H(h0 + block1)   h2 = H(h1 + block2)   (partial block: none)

Block i's hash covers every token before it, so equal hashes mean equal prefixes and the
index can answer "who holds the longest prefix of this prompt" by walking h0, h1, ...
The hash is blake2b, not Python's `hash`, so that every replica computes the same keys.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from hashlib import blake2b

HASH_BYTES = 8
_TOKEN_BYTES = 4


def block_hashes(token_ids: Sequence[int], block_size: int, max_blocks: int) -> list[bytes]:
    """Hashes of the first `min(len // block_size, max_blocks)` full blocks."""
    count = min(len(token_ids) // block_size, max_blocks)
    if count <= 0:
        return []
    tokens = array("I", token_ids[: count * block_size])
    if sys.byteorder == "big":
        tokens.byteswap()  # the keys are little-endian everywhere
    data = tokens.tobytes()
    step = block_size * _TOKEN_BYTES
    hashes = []
    previous = b""
    for start in range(0, count * step, step):
        previous = blake2b(previous + data[start : start + step], digest_size=HASH_BYTES).digest()
        hashes.append(previous)
    return hashes
