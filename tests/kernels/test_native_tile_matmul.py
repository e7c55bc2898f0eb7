"""The AMX tile matmul (parrot_kernels/native/tile_matmul.c) against a float64 reference, on fresh
random inputs, at row counts on both sides of its 16- and 32-row tile boundaries."""

from __future__ import annotations

import pytest
import torch

from parrot_kernels import native

LIB = native.load()
TILES = LIB.matmul if LIB is not None else None
pytestmark = pytest.mark.skipif(
    TILES is None, reason="no AMX tiles here (CPU or OS): the engine keeps oneDNN matmuls"
)


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(torch.bfloat16)


def _close(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, res=None) -> None:
    """Within one bf16 rounding of the exact result, plus float32 accumulation error."""
    want = x.double() @ w.double().T
    if res is not None:
        want = want + res.double()
    scale = x.double().abs() @ w.double().abs().T
    err = (got.double() - want).abs()
    bound = want.abs() * 2.0**-8 + scale * 2.0**-20
    assert (err <= bound).all(), f"max error {err.max().item()}"


@pytest.mark.parametrize("rows", [1, 7, 16, 17, 32, 33, 70])
@pytest.mark.parametrize(("n", "k"), [(64, 32), (96, 576), (960, 576)])
def test_linear_matches_the_reference(rows, n, k):
    x, w = _bf16(rows, k, seed=rows), _bf16(n, k, seed=n + k)
    packed = TILES.pack(w)
    _close(TILES.linear(x, packed), x, w)
    res = _bf16(rows, n, seed=7)
    _close(TILES.linear(x, packed, residual=res), x, w, res)


def test_rows_may_be_strided():
    wide, w = _bf16(20, 160, seed=1), _bf16(64, 128, seed=2)
    x = wide[:, 16:144]  # rows 160 apart
    assert not x.is_contiguous()
    _close(TILES.linear(x, TILES.pack(w)), x, w)


def test_no_rows_give_an_empty_result():
    out = TILES.linear(torch.empty(0, 64, dtype=torch.bfloat16), TILES.pack(_bf16(32, 64, seed=0)))
    assert out.shape == (0, 32)


def test_shapes_off_the_tile_grid_are_refused():
    assert not TILES.supports(_bf16(48, 64, seed=0))  # n not a multiple of 32
    assert not TILES.supports(_bf16(64, 48, seed=0))  # k not a multiple of 32
    assert not TILES.supports(torch.zeros(64, 64))  # float32
    with pytest.raises(AssertionError):
        TILES.pack(_bf16(48, 64, seed=0))
    with pytest.raises(AssertionError):  # x's width must match the weight's k
        TILES.linear(_bf16(4, 96, seed=0), TILES.pack(_bf16(32, 64, seed=0)))
