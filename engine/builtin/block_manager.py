"""KV block allocator: ref-counted fixed-size blocks plus a chained-hash prefix index.

A block is in exactly one of three states:

    in use     ref_count > 0            (listed in one or more contexts' block tables)
    cached     ref_count == 0, hashed   (holds reusable prefix KV; evicted LRU on demand)
    free       ref_count == 0, no hash

Only FULL blocks are hashed, and a full block is never written again, so sharing a hashed
block between contexts is always safe. A partially filled block is owned by one context.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

ROOT_HASH = 0


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()  # kept to reject hash collisions on lookup


def chain_hash(parent_hash: int, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given the hash of every block before it."""
    return hash((parent_hash, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._cached: OrderedDict[int, None] = OrderedDict()  # block ids, LRU first
        self._index: dict[int, int] = {}  # chain hash -> block id
        self.peak_used_blocks = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free plus evictable cached)."""
        return len(self._free) + len(self._cached)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free_blocks

    def allocate(self) -> int:
        if self._free:
            block_id = self._free.popleft()
        elif self._cached:
            block_id, _ = self._cached.popitem(last=False)
            self._forget(self.blocks[block_id])
        else:
            raise MemoryError("no free KV blocks")  # callers check can_allocate first
        self.blocks[block_id].ref_count = 1
        self.peak_used_blocks = max(self.peak_used_blocks, self.num_blocks - self.num_free_blocks)
        return block_id

    def incref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self._cached.pop(block_id)  # only cached blocks are revived by a prefix hit
            used = self.num_blocks - self.num_free_blocks
            self.peak_used_blocks = max(self.peak_used_blocks, used)
        block.ref_count += 1

    def decref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"double free of block {block_id}"
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.hash is not None:
                self._cached[block_id] = None
            else:
                self._free.append(block_id)

    def register(self, block_id: int, parent_hash: int, token_ids: tuple[int, ...]) -> int:
        """Record a block that just became full; returns its chain hash."""
        h = chain_hash(parent_hash, token_ids)
        if not self.enable_prefix_cache:
            return h
        block = self.blocks[block_id]
        if h not in self._index:
            block.hash, block.token_ids = h, token_ids
            self._index[h] = block_id
        return h

    def lookup(self, parent_hash: int, token_ids: tuple[int, ...]) -> tuple[int, int] | None:
        """A cached block holding exactly these tokens after this prefix: (block id, hash)."""
        if not self.enable_prefix_cache:
            return None
        h = chain_hash(parent_hash, token_ids)
        block_id = self._index.get(h)
        if block_id is None or self.blocks[block_id].token_ids != token_ids:
            return None
        return block_id, h

    def _forget(self, block: Block) -> None:
        if block.hash is not None and self._index.get(block.hash) == block.block_id:
            del self._index[block.hash]
        block.hash, block.token_ids = None, ()
