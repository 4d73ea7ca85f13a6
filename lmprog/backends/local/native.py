"""lp.Local's own AVX2 kernels (kernels.c): compiled once per machine with the system's C
compiler into lmprog's cache, loaded with ctypes, and called on torch tensors' memory.

torch has no CPU kernel that reads fewer bytes than float16 for a one-row product on an AVX2
machine (its int8/int4 weight-only kernels were 3-6x slower than float32 here), and a decode
step costs what its weight bytes cost to read. Where the kernels cannot be had (no C compiler,
no AVX2, not x86, LMPROG_NATIVE=0), `kernels()` returns None and lp.Local keeps torch's
kernels: the same answers, slower. A product is split across torch's thread count by the
kernels' own thread pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lmprog.backends.local.groups import IntGroups
from lmprog.paths import cache_dir

log = logging.getLogger(__name__)

# -ffp-contract=off: a * b + c stays two roundings, as torch computes it (not one fused op)
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-shared", "-fPIC")


class Kernels:
    """Typed calls into the compiled library; tensors must be contiguous and on the CPU."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._gemv = _declared(library.lmk_gemv_i8_threads, pointers=5, sizes=5)
        self._scan = _declared(library.lmk_scan_q4_threads, pointers=4, sizes=4)
        self.attention_in = _declared(library.lmk_attention_in, pointers=5, sizes=2)
        self.attention_out_mlp = _declared(library.lmk_attention_out_mlp, pointers=3, sizes=2)

    def gemv_i8(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        offset: torch.Tensor | None,
        x: torch.Tensor,
    ) -> torch.Tensor:
        """[rows, k] float32 x, [n, k] int8 weight with a scale (and offset) per group ->
        [rows, n] float32, on torch's thread count."""
        rows, (n, k) = x.shape[0], weight.shape
        group = _kernel_group(k // scale.shape[1])
        out = torch.empty(rows, n)
        self._gemv(
            weight.data_ptr(), scale.data_ptr(), None if offset is None else offset.data_ptr(),
            x.data_ptr(), out.data_ptr(), rows, n, k, group, torch.get_num_threads(),
        )  # fmt: skip
        return out

    def scan_q4(self, packed: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[rows, k] float32 x, [n, k / 2] 4-bit packed weight -> approximate [rows, n]."""
        rows, n, k = x.shape[0], packed.shape[0], x.shape[1]
        out = torch.empty(rows, n)
        self._scan(
            packed.data_ptr(), scale.data_ptr(), x.data_ptr(), out.data_ptr(),
            rows, n, k, torch.get_num_threads(),
        )  # fmt: skip
        return out


def _declared(function: Any, *, pointers: int, sizes: int) -> Any:
    """A C function of kernels.c taking `pointers` pointers, then `sizes` int64s, returning
    nothing."""
    function.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * sizes
    function.restype = None
    return function


class DecodeMatrices(NamedTuple):
    qkv: IntGroups
    o: IntGroups
    gate_up: IntGroups
    down: IntGroups


class DecodeNorms(NamedTuple):
    """float32 weights the norms multiply by (Gemma's 1 + weight); qk_norm: [heads + kv, dim]."""

    input_norm: torch.Tensor
    qk_norm: torch.Tensor
    post_attention_norm: torch.Tensor
    pre_mlp_norm: torch.Tensor
    post_mlp_norm: torch.Tensor


class _Matrix(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("offset", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("g", ctypes.c_int64),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        *((name, _Matrix) for name in ("qkv", "o", "gate_up", "down")),
        *((name, ctypes.c_void_p) for name in DecodeNorms._fields),
        *((name, ctypes.c_int64) for name in ("hidden", "heads", "kv_heads", "dim")),
        ("eps", ctypes.c_float),
    ]


class DecodeLayer:
    """A Gemma 3 layer's per-token work for decode steps in two calls (kernels.c): before the
    KV cache append and attention, and after them."""

    def __init__(
        self,
        native: Kernels,
        matrices: DecodeMatrices,
        norms: DecodeNorms,
        shape: tuple[int, int, int],
        eps: float,
    ) -> None:
        heads, kv_heads, dim = shape
        self.native, self.width = native, matrices.qkv.values.shape[0]
        self.heads, self.kv_heads, self.dim = heads, kv_heads, dim
        self._tensors = (matrices, [norm.contiguous() for norm in norms])  # what C points at
        self._layer = _Layer(
            *(_matrix(m) for m in matrices),
            *(norm.data_ptr() for norm in self._tensors[1]),
            int(matrices.o.values.shape[0]), heads, kv_heads, dim, eps,
        )  # fmt: skip

    def attention_in(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """[rows, hidden] and [rows, dim] -> [rows, heads + 2 kv_heads, dim]: q and k normed
        and rotated, then v."""
        rows = hidden.shape[0]
        out = torch.empty(rows, self.width // self.dim, self.dim)
        self.native.attention_in(
            ctypes.byref(self._layer), hidden.data_ptr(), cos.data_ptr(), sin.data_ptr(),
            out.data_ptr(), rows, torch.get_num_threads(),
        )  # fmt: skip
        return out

    def attention_out_mlp(self, hidden: torch.Tensor, attended: torch.Tensor) -> None:
        """Adds the rest of the layer to `hidden` ([rows, hidden], contiguous) in place;
        attended: [rows, heads * dim]."""
        self.native.attention_out_mlp(
            ctypes.byref(self._layer),
            hidden.data_ptr(),
            attended.data_ptr(),
            hidden.shape[0],
            torch.get_num_threads(),
        )


def _matrix(groups: IntGroups) -> _Matrix:
    offset = None if groups.offset is None else groups.offset.data_ptr()
    n, k = groups.values.shape
    group = _kernel_group(groups.group)
    return _Matrix(groups.values.data_ptr(), groups.scale.data_ptr(), offset, n, k, group)


def _kernel_group(group: int) -> int:
    """lmk_gemv_i8 is compiled for the group sizes GGUF blocks have."""
    if group not in (16, 32):
        raise ValueError(f"lmprog's group kernel takes groups of 16 or 32 weights, not {group}")
    return group


@functools.cache
def kernels() -> Kernels | None:
    """The kernels, built on first use; None where they cannot be had (logged at INFO)."""
    why = _unusable_here()
    if why is None:
        try:
            return Kernels(ctypes.CDLL(str(_built())))
        except (OSError, subprocess.SubprocessError) as exc:
            why = f"building them failed: {exc}"
    log.info("lp.Local runs torch's kernels: %s", why)
    return None


def _unusable_here() -> str | None:
    if os.environ.get("LMPROG_NATIVE", "1") == "0":
        return "LMPROG_NATIVE=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"they are x86 kernels and this is {platform.machine()}"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "this CPU has no AVX2"
    if _compiler() is None:
        return "no C compiler (set CC, or install gcc)"
    return None


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")


def _built() -> Path:
    """The compiled library in the cache, named after its source, flags and compiler, so a
    change to any of them builds anew; written to a temporary name and renamed, so processes
    racing to build it never load half a file."""
    source = resources.files("lmprog.backends.local").joinpath("kernels.c").read_bytes()
    compiler = str(_compiler())
    digest = hashlib.sha256(source + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"lmprog-kernels-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        source_file, library = Path(work) / "kernels.c", Path(work) / "kernels.so"
        source_file.write_bytes(source)
        done = subprocess.run(
            [compiler, *FLAGS, "-o", str(library), str(source_file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise OSError(f"{compiler} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(library, target)
    return target
