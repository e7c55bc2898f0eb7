"""Prefix hashing and the prefix-affine routing policy (pure functions)."""

from __future__ import annotations

from gateway.pool.prefix import HASH_BYTES, block_hashes
from gateway.pool.routing import Load, RoutingPolicy, choose, overloaded

POLICY = RoutingPolicy(max_waiting=4, max_imbalance=8, min_free_kv=0.1)


def test_block_hashes_are_chained_and_cover_full_blocks() -> None:
    tokens = list(range(50))
    hashes = block_hashes(tokens, block_size=16, max_blocks=64)
    assert len(hashes) == 3  # 50 // 16; the partial block is not hashed
    assert all(len(h) == HASH_BYTES for h in hashes)
    assert block_hashes(tokens[:48], 16, 64) == hashes
    assert block_hashes(tokens, 16, 2) == hashes[:2]
    # A different first block changes every later hash (the chain).
    changed = block_hashes([999, *tokens[1:]], 16, 64)
    assert all(a != b for a, b in zip(changed, hashes, strict=True))
    # Same second block after a different first block: still a different hash.
    assert block_hashes(tokens[16:32], 16, 64)[0] != hashes[1]
    assert block_hashes(tokens[:10], 16, 64) == []


def test_block_hashes_are_stable_across_processes() -> None:
    # blake2b over little-endian uint32 tokens, not Python's salted hash(): every replica
    # (and every release) must compute the same keys for the shared prefix index.
    expected = ["2be61d6b44e007e6", "1baae5dbae034343"]
    assert [h.hex() for h in block_hashes([1, 2, 3, 4], 2, 2)] == expected


def test_prefix_holder_wins_when_not_overloaded() -> None:
    loads = [Load("a", running=3), Load("b"), Load("c", running=1)]
    route = choose(loads, {"a"}, POLICY)
    assert route.engine_id == "a" and route.reason == "prefix"


def test_least_loaded_without_a_holder() -> None:
    loads = [Load("a", running=3), Load("b", running=1, waiting=1), Load("c", running=1)]
    route = choose(loads, set(), POLICY)
    assert route == ("c", "least_loaded")


def test_overloaded_holder_is_skipped() -> None:
    queued = [Load("a", running=2, waiting=4), Load("b", running=2)]
    assert choose(queued, {"a"}, POLICY) == ("b", "least_loaded")
    imbalanced = [Load("a", running=20), Load("b", running=2)]
    assert choose(imbalanced, {"a"}, POLICY) == ("b", "least_loaded")
    short_of_kv = [Load("a", free_kv=0.05), Load("b", running=5)]
    assert choose(short_of_kv, {"a"}, POLICY) == ("b", "least_loaded")


def test_least_loaded_holder_among_several() -> None:
    loads = [Load("a", running=3), Load("b", running=1), Load("c")]
    assert choose(loads, {"a", "b"}, POLICY) == ("b", "prefix")


def test_engines_short_of_kv_come_last() -> None:
    loads = [Load("a", free_kv=0.01), Load("b", running=3)]
    assert choose(loads, set(), POLICY).engine_id == "b"


def test_ties_break_the_same_way_for_everyone() -> None:
    loads = [Load(f"e{i}") for i in range(4)]
    picks = {choose(loads, set(), POLICY, tie_key=bytes([k])).engine_id for k in range(32)}
    assert len(picks) > 1  # distinct prefixes spread out...
    for k in range(8):  # ...and a given prefix always lands on the same engine
        first = choose(loads, set(), POLICY, tie_key=bytes([k]))
        assert choose(list(reversed(loads)), set(), POLICY, tie_key=bytes([k])) == first


def test_overloaded_predicate() -> None:
    assert not overloaded(Load("a", running=8), least_busy=0, policy=POLICY)
    assert overloaded(Load("a", running=9), least_busy=0, policy=POLICY)
    assert overloaded(Load("a", waiting=4), least_busy=4, policy=POLICY)
    assert overloaded(Load("a", free_kv=0.0), least_busy=0, policy=POLICY)
