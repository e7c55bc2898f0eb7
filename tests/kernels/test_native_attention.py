"""The C decode kernel (parrot_kernels/native.py) against the naive reference, on fresh random
inputs."""

from __future__ import annotations

import ctypes
import logging
import random

import pytest
import torch

from parrot_kernels import native
from parrot_kernels.reference import random_block_tables, reference_paged_decode

BS = 16
LIB = native.load()
KERNEL = LIB.decode if LIB else None
needs_kernel = pytest.mark.skipif(
    KERNEL is None, reason="no C compiler or no AVX-512 here: the engine uses torch ops"
)
needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


def _case(seed: int, hq: int, hkv: int, d: int, lens: list[int]):
    """Shuffled, padded block tables over a random bf16 cache; q rows strided like the
    engine's (a view into a wider qkv tensor)."""
    torch.manual_seed(seed)
    need = sum(-(-n // BS) for n in lens) + 4
    k = torch.randn(need, BS, hkv, d).to(torch.bfloat16)
    v = torch.randn(need, BS, hkv, d).to(torch.bfloat16)
    tables, padded = random_block_tables(random.Random(seed), lens, need, BS)
    qkv = torch.randn(len(lens), hq + 2 * hkv, d).to(torch.bfloat16)
    return qkv[:, :hq], k, v, tables, padded


def _check(kernel, seed, hq, hkv, d, lens):
    q, k, v, tables, padded = _case(seed, hq, hkv, d, lens)
    flat = (-1, hkv, d)
    out, lse = kernel(q, k.view(flat), v.view(flat), padded, torch.tensor(lens), BS, d**-0.5)
    ref_out, ref_lse = reference_paged_decode(q, k, v, tables, lens)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    # bf16 output: one rounding of values of magnitude <= ~3 is at most ~0.016.
    assert (out.float() - ref_out.float()).abs().max() < 0.03
    assert (lse - ref_lse).abs().max() < 1e-3


@needs_kernel
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("hq", "hkv", "d"), [(9, 3, 64), (4, 2, 16), (8, 8, 32), (8, 1, 128), (6, 3, 48)]
)
def test_matches_reference_with_uneven_lengths_and_shuffled_blocks(seed, hq, hkv, d):
    rng = random.Random(seed)
    lens = [1, 15, 16, 17, 33] + [rng.randint(1, 300) for _ in range(4)]
    _check(KERNEL, seed, hq, hkv, d, lens)


@needs_kernel
def test_long_context_single_sequence():
    _check(KERNEL, 7, 9, 3, 64, [3001])


@needs_kernel
def test_empty_sequence_gives_minus_infinity_lse_and_zeros():
    """A row with nothing to attend (in the torch plan: all its keys in a shared prefix)
    merges with weight e^-inf = 0, so the other half's result is taken unchanged."""
    q, k, v, _, padded = _case(0, 4, 2, 16, [0, 20])
    out, lse = KERNEL(
        q, k.view(-1, 2, 16), v.view(-1, 2, 16), padded, torch.tensor([0, 20]), BS, 1.0
    )
    assert torch.isneginf(lse[0]).all() and (out[0] == 0).all()
    assert torch.isfinite(lse[1]).all()


@needs_kernel
def test_a_shape_the_kernel_does_not_handle_is_refused_not_miscomputed():
    q = torch.zeros(1, 2, 24, dtype=torch.bfloat16)
    kv = torch.zeros(BS, 1, 24, dtype=torch.bfloat16)
    with pytest.raises(native.NativeError):
        KERNEL(q, kv, kv, torch.zeros(1, 1, dtype=torch.long), torch.tensor([3]), BS, 1.0)
    assert not native.PagedDecode.supports(torch.bfloat16, 2, 1, 24)
    assert not native.PagedDecode.supports(torch.float32, 9, 3, 64)


@needs_compiler
def test_portable_build_without_vector_units_is_correct_too(tmp_path):
    """Built for baseline x86-64 (or whatever the compiler targets by default), the plain-C
    path must compute the same thing; `load()` would not pick it, as it is slower."""
    kernel = native.Library(native.build(("-O2",), out_dir=tmp_path)).decode
    _check(kernel, 3, 9, 3, 64, [1, 17, 200])


@needs_kernel
def test_avx512_build_without_bf16_dot_products_is_correct_too(tmp_path):
    """Where the CPU has AVX-512 but not its bf16 dot product, the scores are computed in
    float32 after converting K: that path must agree as well (and stay vectorized)."""
    library = native.Library(
        native.build(("-O3", "-march=native", "-mno-avx512bf16", "-fopenmp"), out_dir=tmp_path)
    )
    assert library.vectorized
    for seed, (hq, hkv, d) in enumerate([(9, 3, 64), (4, 2, 16), (8, 1, 128)]):
        _check(library.decode, seed, hq, hkv, d, [1, 16, 17, 250])


@needs_compiler
def test_build_is_cached_by_source_and_flags(tmp_path):
    first = native.build(("-O2",), out_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    assert native.build(("-O2",), out_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    assert native.build(("-O1",), out_dir=tmp_path) != first
    assert not list(tmp_path.glob("tmp*"))  # no half-written files left behind


@needs_compiler
def test_an_edit_to_any_source_or_header_builds_a_new_library(tmp_path, monkeypatch):
    copies = []
    for src in (*native.SOURCES, *native.HEADERS):
        copies.append(tmp_path / src.name)
        copies[-1].write_bytes(src.read_bytes())
    monkeypatch.setattr(native, "SOURCES", tuple(copies[: len(native.SOURCES)]))
    monkeypatch.setattr(native, "HEADERS", tuple(copies[len(native.SOURCES) :]))
    built = {native.build(("-O1",), out_dir=tmp_path / "cache")}
    for copy in copies:
        copy.write_text(copy.read_text() + "\n/* edited */\n")
        built.add(native.build(("-O1",), out_dir=tmp_path / "cache"))
    assert len(built) == 1 + len(copies)


@pytest.mark.parametrize("cc", ["false", "/nonexistent/cc"])  # fails; is missing
def test_without_a_working_compiler_load_falls_back_with_the_reason(
    cc, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("PARROT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", cc)
    with caplog.at_level(logging.WARNING, logger="parrot_kernels.native"):
        assert native.load() is None
    assert "native CPU kernels unavailable" in caplog.text
    assert cc in caplog.text
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-built left


# The shared-prefix kernel's variants this machine runs: in AVX-512 BF16 vectors wherever it
# built, and on AMX tiles where the OS grants them (both are tested there).
SHARED_KERNELS = LIB.shared_variants() if LIB is not None else {}
needs_shared = pytest.mark.skipif(not SHARED_KERNELS, reason="no AVX-512 BF16 here")
over_variants = pytest.mark.parametrize("variant", sorted(SHARED_KERNELS) or ["none"])


def _shared_case(seed: int, hq: int, hkv: int, d: int, prefix_blocks: int, own: list[int]):
    """Rows whose tables start with the same `prefix_blocks` blocks, then their own."""
    lens = [prefix_blocks * BS + n for n in own]
    q, k, v, tables, padded = _case(seed, hq, hkv, d, lens)
    for i in range(1, len(lens)):
        tables[i][:prefix_blocks] = tables[0][:prefix_blocks]
        padded[i, :prefix_blocks] = padded[0, :prefix_blocks]
    return q, k, v, tables, padded, lens


@needs_shared
@over_variants
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("hq", "hkv", "d"),
    [(9, 3, 64), (8, 8, 32), (8, 1, 128), (16, 1, 64), (4, 2, 256), (4, 2, 96)],
)
def test_shared_kernel_matches_reference_for_rows_sharing_a_prefix(variant, seed, hq, hkv, d):
    """Items as many rows as a tile holds over a shared prefix (with suffixes of uneven
    length: 1 token, a partial block, several blocks), one item of a single row, one row
    left out; out and lse match the reference, and the row left out is not written. D = 96
    and 256 take the products' partial (32 dims) and several (64 dims) dimension chunks."""
    shared = SHARED_KERNELS[variant]
    rng = random.Random(seed)
    own = [1, 15, 16, 17, 40] + [rng.randint(1, 70) for _ in range(6)]
    prefix = rng.randint(1, 5) * BS
    q, k, v, tables, padded, lens = _shared_case(seed, hq, hkv, d, prefix // BS, own)
    per = native.SharedDecode.rows_per_item(hq, hkv)
    groups = [(list(range(i, min(i + per, 9))), prefix) for i in range(0, 9, per)]
    groups.append(([9], 0))  # no prefix: the row's whole table, alone; row 10 in no item
    out = torch.full(q.shape, 7.0, dtype=torch.bfloat16)
    lse = torch.full(q.shape[:2], 7.0)
    flat = (-1, hkv, d)
    items = native.SharedDecode.items(groups, len(lens))
    shared(q, k.view(flat), v.view(flat), padded, torch.tensor(lens), BS, d**-0.5, items, out, lse)
    ref_out, ref_lse = reference_paged_decode(q, k, v, tables, lens)
    done = sorted(r for rs, _ in groups for r in rs)
    assert done == list(range(10))
    assert (out[:10].float() - ref_out[:10].float()).abs().max() < 0.03
    assert (lse[:10] - ref_lse[:10]).abs().max() < 1e-3
    assert (out[10] == 7.0).all() and (lse[10] == 7.0).all()


@needs_shared
@over_variants
def test_shared_kernel_refuses_items_it_cannot_compute(variant):
    q, k, v, _, padded, lens = _shared_case(0, 9, 3, 64, 2, [5, 9, 3, 4, 6, 7])
    flat, lens_t = (-1, 3, 64), torch.tensor(lens)
    out, lse = torch.empty(q.shape, dtype=torch.bfloat16), torch.empty(q.shape[:2])
    bad = [
        [([0, 1], 24)],  # a prefix that is not a multiple of 16 tokens
        [([0, 1], 48)],  # a prefix that leaves a row nothing of its own
        [([0, 1, 2, 3, 4, 5], 32)],  # more query rows than a tile holds
    ]
    for groups in bad:
        items = native.SharedDecode.items(groups, len(lens))
        with pytest.raises(native.NativeError):
            SHARED_KERNELS[variant](
                q, k.view(flat), v.view(flat), padded, lens_t, BS, 0.125, items, out, lse
            )
    assert not native.SharedDecode.supports(torch.bfloat16, 6, 3, 48, 16)
    assert not native.SharedDecode.supports(torch.bfloat16, 9, 3, 64, 8)


@needs_shared
@over_variants
@pytest.mark.parametrize("threads", [1, 2])
def test_shared_kernel_runs_items_over_one_long_prefix_together(variant, threads):
    """A prefix of several key spans, many items over it, one of them over a shorter prefix
    of the same blocks: the kernel runs such items as one unit (the prefix rearranged once,
    the softmax online across spans) and still matches the reference row by row."""
    hq, hkv, d = 9, 3, 64
    rng = random.Random(11)
    own = [rng.randint(1, 70) for _ in range(25)]
    q, k, v, tables, padded, lens = _shared_case(3, hq, hkv, d, 23, own)
    per = native.SharedDecode.rows_per_item(hq, hkv)
    groups = [(list(range(20, 25)), 160)]  # the shorter prefix first: its unit grows past it
    groups += [(list(range(i, i + per)), 23 * BS) for i in range(0, 20, per)]
    items = native.SharedDecode.items(groups, len(lens))
    out = torch.empty(q.shape, dtype=torch.bfloat16)
    lse = torch.empty(q.shape[:2])
    flat = (-1, hkv, d)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        SHARED_KERNELS[variant](
            q, k.view(flat), v.view(flat), padded, torch.tensor(lens), BS, d**-0.5, items, out, lse
        )
    finally:
        torch.set_num_threads(before)
    ref_out, ref_lse = reference_paged_decode(q, k, v, tables, lens)
    assert (out.float() - ref_out.float()).abs().max() < 0.03
    assert (lse - ref_lse).abs().max() < 1e-3


@needs_shared
@pytest.mark.skipif("tiles" in SHARED_KERNELS, reason="AMX tiles are granted here")
def test_asking_for_tiles_where_there_are_none_is_refused():
    with pytest.raises(native.NativeError, match="AMX tiles"):
        native.SharedDecode(ctypes.CDLL(str(LIB.path)), tiles=True)
