"""The context tree: token sequences over ref-counted KV blocks, forked from shared parents.

A context's block table covers exactly its computed tokens:

    tokens      [t0 ......................... t_n | pending (not yet computed) ]
    blocks      [ b0 full | b1 full | b2 partial ]
                 ^^^^^^^^^^^^^^^^^^^ pinned: inherited from the parent at fork time

A fork shares the parent's full blocks (ref_count += 1) and copies the parent's partial
last block into a block of its own, so no context ever writes into a shared block and no
attention ever reads a position that was not written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.builtin.block_manager import ROOT_HASH, BlockManager
from engine.errors import ContextBusy, ContextExists, OutOfBlocks, UnknownContext


@dataclass(slots=True, eq=False)
class Context:
    context_id: str
    parent: Context | None = None
    token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # one per full computed block
    num_computed: int = 0
    num_pinned_blocks: int = 0
    num_children: int = 0
    busy: bool = False  # a request is filling or generating into it

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed


class ContextTable:
    def __init__(self, blocks: BlockManager, copy_block: Callable[[int, int, int], None]):
        self.blocks = blocks
        self._copy_block = copy_block  # (src, dst, num_tokens): copies KV rows of all layers
        self._contexts: dict[str, Context] = {}

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, context_id: str) -> bool:
        return context_id in self._contexts

    def get(self, context_id: str) -> Context:
        try:
            return self._contexts[context_id]
        except KeyError:
            raise UnknownContext(f"context '{context_id}' does not exist") from None

    def create(self, context_id: str, parent_id: str | None = None) -> Context:
        if context_id in self._contexts:
            raise ContextExists(f"context '{context_id}' already exists")
        if parent_id is None:
            ctx = Context(context_id)
        else:
            ctx = self._fork(context_id, self.get(parent_id))
        self._contexts[context_id] = ctx
        return ctx

    def _fork(self, context_id: str, parent: Context) -> Context:
        # A parent's uncomputed tail (e.g. its last sampled token) is inherited as pending
        # tokens that the child computes into blocks of its own.
        if parent.busy:
            raise ContextBusy(f"context '{parent.context_id}' has a request in flight")
        bs = self.blocks.block_size
        num_full, partial = divmod(parent.num_computed, bs)
        if partial and not self.blocks.can_allocate(1):
            raise OutOfBlocks("no free KV block to fork into")
        table = parent.block_table[:num_full]
        for block_id in table:
            self.blocks.incref(block_id)
        if partial:
            block_id = self.blocks.allocate()
            self._copy_block(parent.block_table[num_full], block_id, partial)
            table = [*table, block_id]
        parent.num_children += 1
        return Context(
            context_id,
            parent=parent,
            token_ids=list(parent.token_ids),
            block_table=table,
            block_hashes=parent.block_hashes[:num_full],
            num_computed=parent.num_computed,
            num_pinned_blocks=num_full,
        )

    def match_cached(self, ctx: Context, keep_last: bool) -> int:
        """Adopt cached full blocks for pending tokens; returns tokens reused.

        With keep_last the final token is always left to compute, since sampling needs
        its logits.
        """
        bs = self.blocks.block_size
        if not self.blocks.enable_prefix_cache or ctx.num_computed % bs:
            return 0
        limit = len(ctx.token_ids) - (1 if keep_last else 0)
        reused = 0
        while ctx.num_computed + bs <= limit:
            start = ctx.num_computed
            parent_hash = ctx.block_hashes[-1] if ctx.block_hashes else ROOT_HASH
            hit = self.blocks.lookup(parent_hash, tuple(ctx.token_ids[start : start + bs]))
            if hit is None:
                break
            block_id, h = hit
            self.blocks.incref(block_id)
            ctx.block_table.append(block_id)
            ctx.block_hashes.append(h)
            ctx.num_computed += bs
            reused += bs
        return reused

    def blocks_needed(self, ctx: Context, num_new: int) -> int:
        bs = self.blocks.block_size
        return -(-(ctx.num_computed + num_new) // bs) - len(ctx.block_table)

    def reserve(self, ctx: Context, num_new: int) -> bool:
        """Make room for `num_new` more computed tokens; False if blocks ran out."""
        need = self.blocks_needed(ctx, num_new)
        if need > 0:
            if not self.blocks.can_allocate(need):
                return False
            ctx.block_table.extend(self.blocks.allocate() for _ in range(need))
        return True

    def commit(self, ctx: Context, num_new: int) -> None:
        """Mark `num_new` tokens computed and index the blocks they filled."""
        bs = self.blocks.block_size
        ctx.num_computed += num_new
        for i in range(len(ctx.block_hashes), ctx.num_computed // bs):
            parent_hash = ctx.block_hashes[-1] if ctx.block_hashes else ROOT_HASH
            tokens = tuple(ctx.token_ids[i * bs : (i + 1) * bs])
            ctx.block_hashes.append(self.blocks.register(ctx.block_table[i], parent_hash, tokens))

    def release(self, ctx: Context) -> None:
        """Preemption: give back the context's own blocks; its tokens are recomputed later."""
        for block_id in ctx.block_table[ctx.num_pinned_blocks :]:
            self.blocks.decref(block_id)
        del ctx.block_table[ctx.num_pinned_blocks :]
        del ctx.block_hashes[ctx.num_pinned_blocks :]
        ctx.num_computed = ctx.num_pinned_blocks * self.blocks.block_size

    def rewind(self, ctx: Context) -> None:
        """Un-compute the last token so that a step produces its logits again.

        A last token inside a full (possibly shared) block must not be rewritten in place,
        so that whole block is dropped and recomputed into a block of the context's own.
        """
        bs = self.blocks.block_size
        if ctx.num_computed % bs:
            ctx.num_computed -= 1  # partial block: exclusively ours, rewriting is safe
            return
        self.blocks.decref(ctx.block_table.pop())
        del ctx.block_hashes[len(ctx.block_table) :]
        ctx.num_pinned_blocks = min(ctx.num_pinned_blocks, len(ctx.block_table))
        ctx.num_computed -= bs

    def free(self, context_id: str) -> None:
        ctx = self.get(context_id)
        if ctx.num_children:
            raise ContextBusy(
                f"context '{context_id}' still has {ctx.num_children} live child context(s)"
            )
        if ctx.busy:
            raise ContextBusy(f"context '{context_id}' has a request in flight")
        for block_id in ctx.block_table:
            self.blocks.decref(block_id)
        ctx.block_table.clear()
        if ctx.parent is not None:
            ctx.parent.num_children -= 1
        del self._contexts[context_id]
