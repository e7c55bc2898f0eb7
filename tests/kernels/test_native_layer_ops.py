"""The C layer ops (RMSNorm, rotary embedding, SwiGLU; parrot_kernels/native/layer_ops.c) against
float64 references, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from parrot_kernels import native

LIB = native.load()
needs_kernels = pytest.mark.skipif(
    LIB is None, reason="no C compiler or no AVX-512 here: the engine uses torch ops"
)
needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")

# One bf16 rounding of a value v is at most |v| * 2^-8; the references are exact in float64.
BF16_REL = 2.0**-8


def _bf16(*shape: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)


def _within_one_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    err = (got.double() - want).abs()
    assert (err <= want.abs() * BF16_REL + 1e-30).all(), f"max error {err.max().item()}"


def ref_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x, w = x.double(), w.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_rope(x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """x [T, H, D]; cos/sin [P, D/2]: each head's halves (a, b) -> (a c - b s, b c + a s)."""
    half = x.shape[-1] // 2
    a, b = x.double()[..., :half], x.double()[..., half:]
    c, s = cos[pos].double().unsqueeze(1), sin[pos].double().unsqueeze(1)
    return torch.cat((a * c - b * s, b * c + a * s), -1)


def ref_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.double().chunk(2, -1)
    return gate * torch.sigmoid(gate) * up


def _tables(positions: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), inv)
    return angles.cos().float(), angles.sin().float()


def _check_rms_norm(ops, rows: int, dim: int, seed: int) -> None:
    wide = _bf16(rows, dim + 7, scale=3.0, seed=seed)
    x = wide[:, 3 : 3 + dim]  # strided rows, as a view into a wider tensor
    w = _bf16(dim, seed=seed + 1)
    _within_one_rounding(ops.rms_norm(x, w, 1e-5), ref_rms_norm(x, w, 1e-5))


def _check_rope(ops, rows: int, heads: int, d: int, seed: int) -> None:
    extra = 3  # v heads after the rotated ones: must come out untouched
    qkv = _bf16(rows, (heads + extra) * d, seed=seed)
    before = qkv.clone()
    cos, sin = _tables(4096, d // 2)
    pos = torch.randint(0, 4096, (rows,), generator=torch.Generator().manual_seed(seed))
    pos[0] = 0  # the identity rotation
    ops.rope_(qkv, pos, heads, d, cos, sin)
    got = qkv[:, : heads * d].view(rows, heads, d)
    # The rotation of a bf16 value is rounded once; its error is relative to the larger
    # input magnitude in the pair, not to the (possibly cancelling) output.
    want = ref_rope(before[:, : heads * d].view(rows, heads, d), pos, cos, sin)
    pair = before[:, : heads * d].view(rows, heads, 2, d // 2).double().abs().amax(2)
    bound = torch.cat((pair, pair), -1) * 2 * BF16_REL
    assert ((got.double() - want).abs() <= bound).all()
    assert torch.equal(got[0], before[0, : heads * d].view(heads, d))
    assert torch.equal(qkv[:, heads * d :], before[:, heads * d :])


def _check_silu_mul(ops, rows: int, n: int, seed: int) -> None:
    gate_up = _bf16(rows, 2 * n, scale=4.0, seed=seed)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # saturated and zero gates
    got = ops.silu_mul(gate_up)
    assert got.shape == (rows, n)
    want = ref_silu_mul(gate_up)
    # silu is computed in float32 (polynomial exp, relative error ~1e-7) then rounded once.
    err = (got.double() - want).abs()
    assert (err <= want.abs() * (BF16_REL + 1e-6) + 1e-30).all()


@needs_kernels
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("rows", "dim"), [(1, 576), (32, 576), (5, 64), (3, 40), (2, 7)])
def test_rms_norm_matches_reference(seed, rows, dim):
    _check_rms_norm(LIB.ops, rows, dim, seed)


@needs_kernels
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("rows", "heads", "d"), [(1, 12, 64), (32, 12, 64), (4, 6, 16)])
def test_rope_rotates_only_the_given_heads_in_place(seed, rows, heads, d):
    _check_rope(LIB.ops, rows, heads, d, seed)


@needs_kernels
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("rows", "n"), [(1, 1536), (32, 1536), (3, 128), (2, 20)])
def test_silu_mul_matches_reference(seed, rows, n):
    _check_silu_mul(LIB.ops, rows, n, seed)


@needs_kernels
def test_prefill_sized_calls_split_over_threads_and_agree_with_one_thread():
    """A 512-row chunk is above the size at which a call runs in parallel."""
    x, w = _bf16(512, 576, seed=1), _bf16(576, seed=2)
    gate_up = _bf16(512, 2 * 1536, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = LIB.ops.rms_norm(x, w, 1e-5), LIB.ops.silu_mul(gate_up)
    finally:
        torch.set_num_threads(threads)
    many = LIB.ops.rms_norm(x, w, 1e-5), LIB.ops.silu_mul(gate_up)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))
    _check_rms_norm(LIB.ops, 512, 576, 4)
    _check_rope(LIB.ops, 512, 12, 64, 5)


@needs_kernels
def test_nan_propagates_and_empty_batches_are_fine():
    x = _bf16(2, 32)
    x[1, 5] = float("nan")
    out = LIB.ops.rms_norm(x, torch.ones(32, dtype=torch.bfloat16), 1e-5)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
    assert LIB.ops.silu_mul(_bf16(0, 8)).shape == (0, 4)
    assert LIB.ops.rms_norm(_bf16(0, 8), torch.ones(8, dtype=torch.bfloat16), 1e-5).shape == (
        0,
        8,
    )


@needs_kernels
def test_an_empty_width_is_refused_not_miscomputed():
    with pytest.raises(native.NativeError):
        LIB.ops.rms_norm(_bf16(2, 0), _bf16(0), 1e-5)


@needs_compiler
def test_portable_build_computes_the_same_functions(tmp_path):
    """Built for baseline x86-64, the plain-C ops must be correct too (load() would not
    pick them, as the vector unit is what makes them worth calling)."""
    ops = native.Library(native.build(("-O2",), out_dir=tmp_path)).ops
    _check_rms_norm(ops, 5, 576, 0)
    _check_rope(ops, 4, 12, 64, 1)
    _check_silu_mul(ops, 3, 100, 2)
