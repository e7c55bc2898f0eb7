"""CPU kernels in C, built on first use: decode attention over paged bf16 KV
(parrot_kernels/native/paged_decode.c; for rows that share a prefix,
parrot_kernels/native/shared_decode.c), a layer's small ops
(parrot_kernels/native/layer_ops.c) and the decode step's weight matmuls on AMX tiles
(parrot_kernels/native/tile_matmul.c).

Why C for attention: the torch path (parrot_kernels/cpu.py) gathers every sequence's KV blocks into
a new tensor, then runs a flash-attention kernel made for long query blocks over the 3 query
rows a grouped-query decode has per KV head. The C kernel reads the blocks in place, loads
each K/V row once per head group and runs the softmax in AVX-512; a layer's decode attention
takes 2-4x less time (docs/BENCHMARKS.md, "Engine"). Where the CPU has AVX-512 BF16, the
scores are bf16 pair products summed in float32 (`vdpbf16ps`), 16 keys at a time.

Why C for RMSNorm, rotary embedding and SwiGLU: in torch each is several elementwise ops,
and at decode batch sizes their fixed cost per op outweighs the work (RMSNorm alone took
about a tenth of a batch-32 step). In C each is one pass with one rounding to bf16.

Why C for the decode matmuls: a decode step reads every weight once for a few rows, so it
is bound by memory bandwidth, and oneDNN's AMX path read the weights at about half the
rate a plain streaming read reaches here. The tile kernel reads weights packed once in its
own tile order, front to back, exactly once per call (docs/BENCHMARKS.md, "Engine").

The library is compiled with the system C compiler (`$CC`, else `cc`/`gcc`) into a per-user
cache, named by a hash of the sources and the flags, so each machine builds it once (about
a second). Without a compiler, or where the vectorized path does not compile (no
AVX-512), `load()` returns None with the reason logged, and the engine keeps torch ops
(as it does with `--no-native-kernels`). `PARROT_KERNEL_CACHE` moves the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# One library: decode attention, the per-layer ops (norm, rotary, SwiGLU) and the tile
# matmul, which share the bf16 helpers in the header. The build's cache key covers every file.
_DIR = Path(__file__).with_name("native")
SOURCES = (
    _DIR / "paged_decode.c",
    _DIR / "shared_decode.c",
    _DIR / "layer_ops.c",
    _DIR / "tile_matmul.c",
)
HEADERS = (_DIR / "bf16.h", _DIR / "tiles.h")
# Tried in order: the machine's own vector units with OpenMP threads, then without OpenMP
# (a compiler without it still gets a working, single-threaded kernel).
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
)
_P, _I64, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class NativeError(RuntimeError):
    """The C kernel refused a call (a shape it does not handle, or out of memory)."""


def cache_dir() -> Path:
    root = os.environ.get("PARROT_KERNEL_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root or Path.home() / ".cache") / "parrot" / "kernels"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(flags: tuple[str, ...], cc: str | None = None, out_dir: Path | None = None) -> Path:
    """Compile the kernels with `flags`; returns the shared library's path (reused if built).

    Raises RuntimeError with the compiler's message when it fails.
    """
    cc = cc or compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    text = b"".join(f.read_bytes() for f in (*SOURCES, *HEADERS))
    key = hashlib.sha256(text + " ".join((cc, *flags)).encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    target = out_dir / f"parrot_kernels-{key}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: processes starting together never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [cc, *flags, "-shared", "-fPIC", *map(str, SOURCES), "-o", tmp, "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(lib: ctypes.CDLL, name: str, *argtypes) -> ctypes._CFuncPtr:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = _I, list(argtypes)
    return fn


class Library:
    """The built library, loaded: `decode` (attention), `ops` (the per-layer ops), `shared`
    (attention of rows that share a prefix: on AMX tiles, else in AVX-512 BF16 vectors; None
    without AVX-512 BF16), and on AMX tiles `matmul` (the decode matmuls; None where the CPU
    or the OS does not offer the tiles)."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))  # CDLL releases the GIL for each call's duration
        # The sources are built with the same flags, so they agree on vectorization.
        self.vectorized = bool(lib.paged_decode_vectorized()) and bool(lib.layer_ops_vectorized())
        self.decode = PagedDecode(lib)
        self.ops = LayerOps(lib)
        # Asks the OS for the tile state once per process; False without AMX at build time.
        self.matmul = TileMatmul(lib) if lib.tile_matmul_available() else None
        # Decode rows that share a prefix: on the same tiles where granted, else in vectors.
        self.shared = None
        if lib.shared_decode_available():
            self.shared = SharedDecode(lib, tiles=bool(lib.shared_decode_tiles()))
        self.path = path
        self._lib = lib

    def shared_variants(self) -> dict[str, SharedDecode]:
        """Every variant of the shared-prefix kernel this machine runs, by name: "vectors"
        wherever it built, and "tiles" where the OS grants them (for tests and benchmarks;
        the engine takes `shared`)."""
        if self.shared is None:
            return {}
        variants = {"vectors": SharedDecode(self._lib, tiles=False)}
        if self.shared.tiles:
            variants["tiles"] = self.shared
        return variants


class PagedDecode:
    """The attention kernel: `__call__` mirrors parrot_kernels.cpu.decode_attention, with lengths
    in place of the padding bias."""

    def __init__(self, lib: ctypes.CDLL):
        args = (_P, _I64, _P, _P, _P, _I64, _P, _I, _I, _I, _I, _I, ctypes.c_float, _P, _P, _I)
        self._fn = _bind(lib, "paged_decode", *args)

    @staticmethod
    def supports(dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
        group = num_heads // num_kv_heads
        return (
            dtype == torch.bfloat16
            and num_heads % num_kv_heads == 0
            and group <= 8
            and head_dim % 16 == 0
            and head_dim <= 256
        )

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        tables: torch.Tensor,
        lens: torch.Tensor,
        block_size: int,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [B, Hq, D] bf16 (rows may be strided); k/v [slots, Hkv, D] bf16 contiguous;
        tables [B, nb] int64 block ids; lens [B] int64 tokens to attend per sequence.
        Returns out [B, Hq, D] bf16 and lse [B, Hq] float32."""
        q, tables, lens = _decode_inputs(q, k, v, tables, lens)
        b, hq, d = q.shape
        out = torch.empty(b, hq, d, dtype=q.dtype)
        lse = torch.empty(b, hq, dtype=torch.float32)
        if b == 0:
            return out, lse
        status = self._fn(
            *_cache_args(q, k, v, tables, lens),
            b,
            hq,
            k.shape[1],
            d,
            block_size,
            scale,
            out.data_ptr(),
            lse.data_ptr(),
            torch.get_num_threads(),
        )
        _ok(status, "paged_decode", q)
        return out, lse


@dataclass(frozen=True, slots=True)
class SharedItems:
    """A step's shared-prefix work items, as the kernel reads them (built once per step)."""

    members: torch.Tensor  # [rows] batch rows, item after item
    starts: torch.Tensor  # [items + 1] offsets into members
    prefix: torch.Tensor  # [items] shared tokens of each item


class SharedDecode:
    """Decode attention for items of rows that share a prefix
    (parrot_kernels/native/shared_decode.c): the prefix's K and V are read once per item, and
    rearranged for the two products once for all the items over the same prefix blocks. The
    products run on AMX tiles with `tiles`, else in AVX-512 BF16 vectors (same results up to
    float32 summation order)."""

    def __init__(self, lib: ctypes.CDLL, tiles: bool):
        if tiles and not lib.shared_decode_tiles():
            raise NativeError("shared_decode: AMX tiles were asked for but are not available")
        args = (_P, _I64, _P, _P, _P, _I64, _P, _I, _I, _I, _I, ctypes.c_float, _P, _P)
        self._fn = _bind(lib, "shared_decode", *args, _P, _P, _P, _I, _I, _I)
        self.tiles = tiles

    @staticmethod
    def rows_per_item(num_heads: int, num_kv_heads: int) -> int:
        """Sequences one item holds: its query rows (the heads of one KV head) fill a tile."""
        return 16 // (num_heads // num_kv_heads)

    @staticmethod
    def supports(
        dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int
    ) -> bool:
        return (
            dtype == torch.bfloat16
            and num_heads % num_kv_heads == 0
            and num_heads // num_kv_heads <= 16
            and head_dim % 32 == 0
            and head_dim <= 256
            and block_size % 16 == 0
        )

    @staticmethod
    def items(groups: list[tuple[list[int], int]], batch: int) -> SharedItems:
        """groups: (rows of a batch of `batch`, shared prefix tokens); each group's rows at
        most rows_per_item, the prefix a multiple of 16 tokens below each row's length and
        read from the first row's table (the kernel checks those). A row is in one item at
        most."""
        members = [r for rows, _ in groups for r in rows]
        assert len(set(members)) == len(members), "a row in two items"
        assert all(0 <= r < batch for r in members), "a row outside the batch"
        starts = [0]
        for rows, _ in groups:
            starts.append(starts[-1] + len(rows))
        return SharedItems(
            torch.tensor(members, dtype=torch.long),
            torch.tensor(starts, dtype=torch.long),
            torch.tensor([p for _, p in groups], dtype=torch.long),
        )

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        tables: torch.Tensor,
        lens: torch.Tensor,
        block_size: int,
        scale: float,
        items: SharedItems,
        out: torch.Tensor,
        lse: torch.Tensor,
    ) -> None:
        """As PagedDecode, for the rows of `items` only: writes their rows of `out` [B, Hq, D]
        and `lse` [B, Hq] (the other rows are left as they are)."""
        q, tables, lens = _decode_inputs(q, k, v, tables, lens)
        b, hq, d = q.shape
        assert out.shape == q.shape and out.is_contiguous() and lse.is_contiguous()
        assert lse.shape == (b, hq) and lse.dtype == torch.float32
        status = self._fn(
            *_cache_args(q, k, v, tables, lens),
            hq,
            k.shape[1],
            d,
            block_size,
            scale,
            out.data_ptr(),
            lse.data_ptr(),
            items.members.data_ptr(),
            items.starts.data_ptr(),
            items.prefix.data_ptr(),
            len(items.prefix),
            int(self.tiles),
            torch.get_num_threads(),
        )
        _ok(status, "shared_decode", q)


class LayerOps:
    """RMSNorm, rotary embedding and SwiGLU over bf16 rows (parrot_kernels/native/layer_ops.c), for
    any widths. Each call checks its tensors, since the C side trusts its pointers."""

    def __init__(self, lib: ctypes.CDLL):
        f = ctypes.c_float
        self._rms = _bind(lib, "rms_norm", _P, _I64, _P, _P, _I64, _I64, f, _I)
        self._rope = _bind(lib, "rope_inplace", _P, _I64, _P, _I64, _I, _I, _P, _P, _I)
        self._silu = _bind(lib, "silu_mul", _P, _I64, _I64, _P, _I)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [T, H] bf16 (rows may be strided) -> x / rms(x) * weight, a new [T, H] tensor."""
        _check_rows(x, weight.shape[0])
        assert weight.dtype == torch.bfloat16 and weight.is_contiguous()
        out = torch.empty(x.shape, dtype=x.dtype)
        rows, dim = x.shape
        status = self._rms(
            x.data_ptr(),
            x.stride(0),
            weight.data_ptr(),
            out.data_ptr(),
            rows,
            dim,
            eps,
            torch.get_num_threads(),
        )
        _ok(status, "rms_norm", x)
        return out

    def rope_(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        heads: int,
        head_dim: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> None:
        """Rotates the first `heads` heads of each row of x [T, W] bf16 in place, row r by
        position positions[r]; cos/sin: float32 [P, head_dim / 2] with P > every position
        (the caller checks that once a step: here it would cost a pass per layer)."""
        _check_rows(x, heads * head_dim, at_least=True)
        assert positions.dtype == torch.long and positions.is_contiguous()
        assert positions.shape[0] == x.shape[0]
        half = (cos.shape[0], head_dim // 2)
        assert cos.dtype == sin.dtype == torch.float32 and cos.shape == sin.shape == half
        assert cos.is_contiguous() and sin.is_contiguous()
        status = self._rope(
            x.data_ptr(),
            x.stride(0),
            positions.data_ptr(),
            x.shape[0],
            heads,
            head_dim,
            cos.data_ptr(),
            sin.data_ptr(),
            torch.get_num_threads(),
        )
        _ok(status, "rope_inplace", x)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up [T, 2N] bf16 contiguous (gate, then up) -> silu(gate) * up, [T, N]."""
        assert gate_up.dtype == torch.bfloat16 and gate_up.is_contiguous()
        rows, n = gate_up.shape[0], gate_up.shape[1] // 2
        assert gate_up.shape[1] == 2 * n
        out = torch.empty(rows, n, dtype=gate_up.dtype)
        status = self._silu(gate_up.data_ptr(), rows, n, out.data_ptr(), torch.get_num_threads())
        _ok(status, "silu_mul", gate_up)
        return out


@dataclass(frozen=True, slots=True)
class TileWeight:
    """A weight [n, k] packed by TileMatmul.pack (the tile order of tile_matmul.c)."""

    data: torch.Tensor
    n: int
    k: int


class TileMatmul:
    """out = x @ W.T (+ residual) on AMX tiles, for bf16 weights packed once."""

    def __init__(self, lib: ctypes.CDLL):
        self._pack = _bind(lib, "tile_pack", _P, _I64, _I64, _P)
        args = (_P, _I64, _I64, _I64, _P, _I64, _P, _I64, _P, _I64, _I)
        self._linear = _bind(lib, "tile_linear", *args)

    @staticmethod
    def supports(weight: torch.Tensor) -> bool:
        n, k = weight.shape
        return weight.dtype == torch.bfloat16 and n % 32 == 0 and k % 32 == 0

    def pack(self, weight: torch.Tensor) -> TileWeight:
        """weight [n, k] bf16 (n and k multiples of 32) -> its packed copy."""
        assert self.supports(weight) and weight.device.type == "cpu"
        weight = weight.contiguous()
        n, k = weight.shape
        data = torch.empty(n * k, dtype=torch.bfloat16)
        _ok(self._pack(weight.data_ptr(), n, k, data.data_ptr()), "tile_pack", weight)
        return TileWeight(data, n, k)

    def linear(
        self, x: torch.Tensor, weight: TileWeight, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [m, k] bf16 (rows may be strided) -> x @ W.T [m, n], plus `residual` [m, n]
        (added in float32 before the one rounding) when given."""
        _check_rows(x, weight.k)
        m = x.shape[0]
        out = torch.empty(m, weight.n, dtype=torch.bfloat16)
        res, res_stride = None, 0
        if residual is not None:
            _check_rows(residual, weight.n)
            assert residual.shape[0] == m
            res, res_stride = residual.data_ptr(), residual.stride(0)
        status = self._linear(
            x.data_ptr(),
            x.stride(0),
            m,
            weight.k,
            weight.data.data_ptr(),
            weight.n,
            res,
            res_stride,
            out.data_ptr(),
            weight.n,
            torch.get_num_threads(),
        )
        _ok(status, "tile_linear", x)
        return out


def _decode_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decode kernels' inputs as the C code reads them: q's heads contiguous (its rows may
    stay strided), the caches contiguous bf16, tables and lengths contiguous int64."""
    if q.stride(2) != 1 or q.stride(1) != q.shape[2]:
        q = q.contiguous()
    assert k.is_contiguous() and v.is_contiguous() and k.dtype == torch.bfloat16
    assert tables.dtype == torch.long and lens.dtype == torch.long
    return q, tables.contiguous(), lens.contiguous()


def _cache_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: torch.Tensor, lens: torch.Tensor
) -> tuple[int, ...]:
    """The decode kernels' leading arguments, in their order: q and its row stride, the
    caches, the block tables and their width, the lengths (inputs from _decode_inputs)."""
    return (
        q.data_ptr(),
        q.stride(0),
        k.data_ptr(),
        v.data_ptr(),
        tables.data_ptr(),
        tables.shape[1],
        lens.data_ptr(),
    )


def _check_rows(x: torch.Tensor, width: int, at_least: bool = False) -> None:
    assert x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 2
    assert x.stride(1) == 1 and (x.shape[1] >= width if at_least else x.shape[1] == width)


def _ok(status: int, name: str, x: torch.Tensor) -> None:
    if status != 0:
        raise NativeError(f"{name} returned {status} for a tensor of shape {tuple(x.shape)}")


def load() -> Library | None:
    """The vectorized kernels for this machine, or None (reason logged) to keep torch ops."""
    errors = []
    for flags in FLAG_SETS:
        try:
            library = Library(build(flags))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        if library.vectorized:
            return library
        errors.append(f"built with {' '.join(flags)} but without AVX-512")
        break
    log.warning("native CPU kernels unavailable, using torch ops: %s", "; ".join(errors))
    return None
