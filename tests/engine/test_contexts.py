"""Block manager and context tree: sharing, copy-on-fork, prefix reuse and no leaks."""

from __future__ import annotations

import random

import pytest

from engine.builtin.block_manager import BlockManager
from engine.builtin.contexts import ContextTable
from engine.errors import ContextBusy, ContextExists, UnknownContext

BS = 4


def make_table(num_blocks: int = 64, prefix_cache: bool = True):
    copies: list[tuple[int, int, int]] = []
    blocks = BlockManager(num_blocks, BS, prefix_cache)
    return ContextTable(blocks, lambda s, d, n: copies.append((s, d, n))), copies


def compute(table: ContextTable, ctx, tokens: list[int]) -> None:
    """What a fill does, minus the model: append, reuse cache, reserve, commit."""
    ctx.token_ids.extend(tokens)
    table.match_cached(ctx, keep_last=False)
    n = ctx.num_pending
    assert table.reserve(ctx, n)
    table.commit(ctx, n)


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    table, copies = make_table()
    parent = table.create("p")
    compute(table, parent, list(range(10)))  # 2 full blocks + 2 tokens
    child = table.create("c", "p")
    assert child.block_table[:2] == parent.block_table[:2]
    assert child.block_table[2] != parent.block_table[2]
    assert copies == [(parent.block_table[2], child.block_table[2], 2)]
    assert [table.blocks.blocks[b].ref_count for b in parent.block_table] == [2, 2, 1]
    assert child.num_computed == 10 and child.num_pinned_blocks == 2


def test_prefix_cache_reuses_blocks_across_unrelated_contexts():
    table, _ = make_table()
    a = table.create("a")
    compute(table, a, list(range(13)))
    b = table.create("b")
    b.token_ids.extend(list(range(12)) + [99])
    assert table.match_cached(b, keep_last=True) == 12
    assert b.block_table == a.block_table[:3]
    c = table.create("c")
    c.token_ids.extend([0, 1, 2, 7, 4, 5, 6, 7])
    assert table.match_cached(c, keep_last=False) == 0  # first block differs


def test_keep_last_leaves_a_token_to_compute():
    table, _ = make_table()
    compute(table, table.create("a"), list(range(8)))
    b = table.create("b")
    b.token_ids.extend(range(8))
    assert table.match_cached(b, keep_last=True) == 4
    assert table.match_cached(table.create("c"), keep_last=False) == 0


def test_prefix_cache_off_never_reuses():
    table, _ = make_table(prefix_cache=False)
    compute(table, table.create("a"), list(range(8)))
    b = table.create("b")
    b.token_ids.extend(range(8))
    assert table.match_cached(b, keep_last=False) == 0


def test_errors_for_unknown_duplicate_and_parent_with_children():
    table, _ = make_table()
    compute(table, table.create("p"), [1, 2, 3])
    table.create("c", "p")
    with pytest.raises(ContextExists):
        table.create("p")
    with pytest.raises(UnknownContext):
        table.create("x", "missing")
    with pytest.raises(UnknownContext):
        table.free("missing")
    with pytest.raises(ContextBusy):
        table.free("p")
    table.free("c")
    table.free("p")
    assert table.blocks.num_free_blocks == table.blocks.num_blocks


def test_rewind_of_a_full_shared_block_drops_it_instead_of_rewriting():
    table, _ = make_table()
    parent = table.create("p")
    compute(table, parent, list(range(8)))
    child = table.create("c", "p")
    shared = child.block_table[-1]
    table.rewind(child)
    assert child.num_computed == 4 and shared not in child.block_table
    assert table.blocks.blocks[shared].ref_count == 1


def test_release_keeps_pinned_blocks():
    table, _ = make_table()
    parent = table.create("p")
    compute(table, parent, list(range(8)))
    child = table.create("c", "p")
    compute(table, child, [50, 51, 52, 53, 54])
    table.release(child)
    assert child.block_table == parent.block_table and child.num_computed == 8
    assert child.num_pending == 5


@pytest.mark.parametrize("seed", range(20))
def test_random_fork_fill_free_sequences_leak_nothing(seed: int):
    rng = random.Random(seed)
    table, _ = make_table(num_blocks=400, prefix_cache=rng.random() < 0.7)
    live: list[str] = []
    for step in range(120):
        op = rng.random()
        if op < 0.35 or not live:
            name = f"r{step}"
            compute(table, table.create(name), [rng.randrange(5) for _ in range(rng.randint(1, 9))])
            live.append(name)
        elif op < 0.6:
            parent = rng.choice(live)
            name = f"f{step}"
            table.create(name, parent)
            live.append(name)
        elif op < 0.8:
            ctx = table.get(rng.choice(live))
            compute(table, ctx, [rng.randrange(5) for _ in range(rng.randint(1, 6))])
        elif op < 0.9:
            victim = table.get(rng.choice(live))
            table.release(victim)
            compute(table, victim, [])
        else:
            childless = [n for n in live if not table.get(n).num_children]
            name = rng.choice(childless)
            table.free(name)
            live.remove(name)
        used = sum(b.ref_count > 0 for b in table.blocks.blocks)
        assert used + table.blocks.num_free_blocks == table.blocks.num_blocks
    while live:
        childless = [n for n in live if not table.get(n).num_children]
        for name in childless:
            table.free(name)
            live.remove(name)
    assert table.blocks.num_free_blocks == table.blocks.num_blocks
    assert all(b.ref_count == 0 for b in table.blocks.blocks)
