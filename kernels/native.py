"""Decode attention in C over paged bf16 KV (kernels/native/paged_decode.c), built on first use.

Why C: the torch path (kernels/cpu.py) gathers every sequence's KV blocks into a new tensor,
then runs a flash-attention kernel made for long query blocks over the 3 query rows a
grouped-query decode has per KV head. The C kernel reads the blocks in place, loads each K/V
row once per head group and runs the softmax in AVX-512; a layer's decode attention takes
2-4x less time (docs/BENCHMARKS.md, "Engine").

The library is compiled with the system C compiler (`$CC`, else `cc`/`gcc`) into a per-user
cache, named by a hash of the source and the flags, so each machine builds it once (about
a second). Without a compiler, or where the vectorized path does not compile (no
AVX-512), `load()` returns None with the reason logged, and the engine keeps the torch path
(as it does with `--no-native-attention`). `PARROT_KERNEL_CACHE` moves the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native") / "paged_decode.c"
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
    """Compile the kernel with `flags`; returns the shared library's path (reused if built).

    Raises RuntimeError with the compiler's message when it fails.
    """
    cc = cc or compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((cc, *flags)).encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    target = out_dir / f"paged_decode-{key}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: processes starting together never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [cc, *flags, "-shared", "-fPIC", str(SOURCE), "-o", tmp, "-lm"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class PagedDecode:
    """The loaded kernel: `__call__` mirrors kernels.cpu.decode_attention, with lengths in
    place of the padding bias."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))  # CDLL releases the GIL for the call's duration
        self.vectorized = bool(lib.paged_decode_vectorized())
        self._fn = lib.paged_decode
        self._fn.restype = _I
        self._fn.argtypes = [_P, _I64, _P, _P, _P, _I64, _P, _I, _I, _I, _I, _I]
        self._fn.argtypes += [ctypes.c_float, _P, _P, _I]
        self.path = path

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
        b, hq, d = q.shape
        if q.stride(2) != 1 or q.stride(1) != d:
            q = q.contiguous()
        assert k.is_contiguous() and v.is_contiguous() and k.dtype == torch.bfloat16
        assert tables.dtype == torch.long and lens.dtype == torch.long
        tables, lens = tables.contiguous(), lens.contiguous()
        out = torch.empty(b, hq, d, dtype=q.dtype)
        lse = torch.empty(b, hq, dtype=torch.float32)
        if b == 0:
            return out, lse
        status = self._fn(
            q.data_ptr(),
            q.stride(0),
            k.data_ptr(),
            v.data_ptr(),
            tables.data_ptr(),
            tables.shape[1],
            lens.data_ptr(),
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
        if status != 0:
            raise NativeError(f"paged_decode returned {status} for q {tuple(q.shape)}")
        return out, lse


def load() -> PagedDecode | None:
    """The vectorized kernel for this machine, or None (reason logged) to keep the torch path."""
    errors = []
    for flags in FLAG_SETS:
        try:
            kernel = PagedDecode(build(flags))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        if kernel.vectorized:
            return kernel
        errors.append(f"built with {' '.join(flags)} but without AVX-512")
        break
    log.warning("native decode attention unavailable, using torch: %s", "; ".join(errors))
    return None
