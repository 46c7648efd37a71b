"""The CPU engine: NumPy arrays, SciPy's BLAS in place, NumPy kernels with ``out=``.

Row-major arrays meet column-major BLAS through transposition: the C-ordered
``(m, n)`` array ``c`` is, as ``c.T``, a Fortran-ordered ``(n, m)`` matrix with no
copy, and ``c = op(a)·op(b)`` is ``cᵀ = op(b)ᵀ·op(a)ᵀ``. SciPy's ``?gemm`` writes in
place only into a Fortran-ordered ``c`` of the right dtype; for anything else it
returns a copy and leaves ``c`` alone, so every call checks that it got ``c`` back.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from scipy.linalg import blas

from densenn.backend.cpu import fused as cpu_fused
from densenn.backend.cpu import mkl as cpu_mkl
from densenn.backend.cpu import threads as cpu_threads
from densenn.backend.cpu.fused import map_kernel, row_kernel
from densenn.config import setting
from densenn.errors import DensennError, check_positive_int
from densenn.kernels.ops import RowMap
from densenn.kernels.random import numpy_fill

_GEMM = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}
_AXPY = {np.dtype(np.float32): blas.saxpy, np.dtype(np.float64): blas.daxpy}
_GER = {np.dtype(np.float32): blas.sger, np.dtype(np.float64): blas.dger}
#: every buffer the engine makes starts on a cache line. NumPy's own start 16 bytes past
#: one here, and MKL's GEMM ran the seed's 4000² products 2-4% slower on those.
ALIGN = 64


def _aligned(shape, dtype, zero: bool) -> np.ndarray:
    """A new C-contiguous array whose first element sits on an ALIGN-byte boundary."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if np.iterable(shape) else (shape,)
    if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise DensennError(f"shape must be non-negative integers, got {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + ALIGN, np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class _Scratch(threading.local):
    """Scratch that a call writes and then reads back, one set per thread: networks on one
    engine may train and predict in several threads at once."""

    def __init__(self):
        self.coefs: dict = {}       # (dtype, n) -> the scalars of an update kernel (see _coef)
        self.partials: dict = {}    # (dtype, width) -> row blocks' column sums (see delta)
        self.hash: Any = None       # (index, h, t) uint64 for the NumPy form of uniform


def _contiguous(arrays) -> bool:
    for x in arrays:
        if not x.flags.c_contiguous:
            return False
    return True


def _check_rows(op, arrays):
    """DensennError unless each ``row`` array of ``op`` has one value per row of the first
    written array (the Numba loops read it unchecked)."""
    rows = arrays[op.first_written].shape[0]
    for (name, role), x in zip(op.arrays, arrays):
        if role == "row" and (x.ndim != 1 or x.shape[0] != rows):
            raise DensennError(f"{op.name}: {name} must be a vector of {rows} values (one per row), got shape "
                               f"{x.shape}")


def _check_scalars(op, arrays):
    """DensennError unless each ``scalar`` array of ``op`` has one element."""
    for (name, role), x in zip(op.arrays, arrays):
        if role == "scalar" and x.size != 1:
            raise DensennError(f"{op.name}: {name} is a scalar array and must have 1 element, got shape {x.shape}")


def _rows(x, lo, hi):
    """Rows lo:hi of an optional buffer (an activation's working memory may be None)."""
    return None if x is None else x[lo:hi]


class CPUEngine:
    """NumPy + BLAS. Arrays are C-contiguous ``numpy.ndarray``.

    ``fused`` (default: when Numba is installed and ``$DENSENN_NUMBA`` is not
    ``0``) runs bias+activation, delta and the optimizer updates as one-pass
    Numba kernels (see ``fused``); ``fused=False`` is the pure NumPy path.
    ``blas`` picks the GEMM: ``"auto"`` (default, or ``$DENSENN_BLAS``) uses
    Intel MKL when it is installed (see ``mkl``), ``"openblas"`` SciPy's
    BLAS, ``"mkl"`` insists on MKL. ``threads`` (default ``$DENSENN_THREADS``,
    else every usable core) is how many row blocks a large elementwise pass is
    split into (see ``threads``); the BLAS keeps its own thread count.
    """

    name = "cpu"
    #: labels and batch indices are NumPy's native index type: take/argmax then copy nothing
    index_dtype = np.dtype(np.intp)

    def __init__(self, fused: bool | None = None, blas: str | None = None, threads: int | None = None):
        if fused is None:
            fused = cpu_fused.AVAILABLE and setting("DENSENN_NUMBA")
        if fused and not cpu_fused.AVAILABLE:
            raise DensennError("the fused CPU kernels need Numba: pip install numba")
        self.fused = bool(fused)
        self._mkl = cpu_mkl.choose(blas)
        self.blas = "mkl" if self._mkl is not None else "openblas"
        self.uploads = 0  # host→engine copies, counted like the device engines do
        # large elementwise passes run in row blocks on every core (see threads.py)
        self.set_threads(threads)
        self._ones: dict = {}  # dtype -> a vector of ones, grown to the largest batch seen
        # the db a delta kernel gets when no column sums are wanted
        self._no_sums = {dt: np.empty(0, dt) for dt in _GEMM}
        self._scratch = _Scratch()

    def set_threads(self, threads: int | None = None) -> None:
        """Split large elementwise passes into ``threads`` row blocks (None: ``$DENSENN_THREADS``,
        else every usable core; 1 keeps them on the calling thread)."""
        if threads is None:
            threads = setting("DENSENN_THREADS") or cpu_threads.usable_cores()
        self._blocks = cpu_threads.RowBlocks(check_positive_int("threads", threads))

    @property
    def threads(self) -> int:
        return self._blocks.threads

    def __repr__(self):
        return f"CPUEngine(fused={self.fused}, blas={self.blas!r}, threads={self._blocks.threads})"

    # -- memory ------------------------------------------------------------
    def supports(self, dtype) -> bool:
        return np.dtype(dtype) in _GEMM

    def empty(self, shape, dtype):
        return _aligned(shape, dtype, zero=False)

    def zeros(self, shape, dtype):
        return _aligned(shape, dtype, zero=True)

    def to_engine(self, host, dtype=None):
        host = np.asarray(host)
        dtype = host.dtype if dtype is None else np.dtype(dtype)
        if host.dtype == dtype and host.flags.c_contiguous and host.ndim:
            # training never writes its inputs, so a correctly typed array is used as it is
            return host
        out = self.empty(host.shape or (1,), dtype)
        np.copyto(out, host.reshape(out.shape), casting="unsafe")
        return out

    def upload(self, host, out):
        self.uploads += 1
        np.copyto(out, host)
        return out

    def to_host(self, x):
        return np.array(x, copy=True)

    def owns(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def nbytes(self, x) -> int:
        return int(x.nbytes)

    def release(self, x) -> None:
        # NumPy frees the buffer when the last reference goes; the owner drops it.
        return None

    def synchronize(self) -> None:
        return None

    # -- BLAS-like ---------------------------------------------------------
    def gemm(self, alpha, a, b, beta, c, trans_a=False, trans_b=False):
        if self._mkl is not None and a.ndim == b.ndim == c.ndim == 2 and a.dtype == b.dtype == c.dtype:
            status = self._mkl(alpha, a, b, beta, c, trans_a, trans_b)   # checks shapes and strides itself
            if status == cpu_mkl.DONE:
                return c
        m, n = c.shape
        (ma, ka), (kb, nb) = (a.shape[::-1] if trans_a else a.shape), (b.shape[::-1] if trans_b else b.shape)
        if (ma, nb, ka) != (m, n, kb):
            raise DensennError(f"gemm shapes do not match: op(a) {ma}×{ka}, op(b) {kb}×{nb}, c {m}×{n}")
        ct = c.T
        out = _GEMM[c.dtype](alpha, b.T, a.T, beta=beta, c=ct,
                             trans_a=int(trans_b), trans_b=int(trans_a), overwrite_c=1)
        if out is not ct:
            raise DensennError(
                f"gemm could not write in place into c ({c.shape}, {c.dtype}, "
                f"C-contiguous={c.flags.c_contiguous}); operands must share c's dtype")
        return c

    def ones(self, n: int, dtype):
        """A read-only vector of n ones (the seed's ``ones`` for the rank-1 bias update)."""
        dt = np.dtype(dtype)
        if dt not in self._ones or self._ones[dt].shape[0] < n:
            self._ones[dt] = np.ones(max(n, 1), dtype=dt)
        return self._ones[dt][:n]

    def add_bias(self, z, b):
        # The seed's rank-1 update z += b·1ᵀ through BLAS ?ger: in place, no temporary
        # (NumPy's broadcasting add goes through its iteration buffer).
        if self._mkl is not None and b.dtype == z.dtype and self._mkl.rows_contiguous(z) and b.flags.c_contiguous:
            return self._mkl.ger(1.0, self.ones(z.shape[0], z.dtype), b, z)
        zt = z.T
        if z.flags.c_contiguous and b.dtype == z.dtype:
            out = _GER[z.dtype](1.0, b, self.ones(z.shape[0], z.dtype), a=zt, overwrite_a=1)
            if out is zt:
                return z
        return np.add(z, b, out=z)

    def sum_rows(self, x, out):
        if self._blocks.splits(x.T):
            # in blocks of columns: each block's sums are whole, nothing to combine afterwards
            self._blocks.run(lambda lo, hi: np.add.reduce(x[:, lo:hi], axis=0, out=out[lo:hi]), x.shape[1])
            return out
        return np.add.reduce(x, axis=0, out=out)    # np.sum's wrapper costs more than a small sum

    def axpy(self, alpha, x, y):
        if x.flags.c_contiguous and y.flags.c_contiguous and x.dtype == y.dtype and x.size == y.size:
            if self._mkl is not None:
                return self._mkl.axpy(alpha, x, y)
            _AXPY[y.dtype](x.reshape(-1), y.reshape(-1), a=alpha)
            return y
        y += alpha * x
        return y

    def scal(self, alpha, x):
        return np.multiply(x, alpha, out=x)

    def copy(self, x, y):
        np.copyto(y, x)
        return y

    def fill(self, x, value):
        x.fill(value)
        return x

    def take_rows(self, src, idx, out):
        # mode="clip" writes straight into out; the default "raise" goes through a temporary
        if self._blocks.splits(out):
            self._blocks.run(lambda lo, hi: np.take(src, idx[lo:hi], axis=0, out=out[lo:hi], mode="clip"),
                             out.shape[0])
            return out
        return np.take(src, idx, axis=0, out=out, mode="clip")

    def uniform(self, out, key: int):
        """out = u(key, i) over its flat index i: uniform numbers in [0, 1), the same on every
        engine (see densenn.kernels.random). Overwrites out."""
        if not out.flags.c_contiguous:
            raise DensennError(f"uniform: out must be C-contiguous, got strides {out.strides}")
        flat = out.reshape(-1)
        if self.fused:
            cpu_fused.uniform_kernel()(flat, key)
            return out
        n = flat.shape[0]
        scratch = self._scratch
        if scratch.hash is None or scratch.hash[0].shape[0] < n:
            # grown to the largest draw once: 0..n-1 and two words of scratch per element
            scratch.hash = (np.arange(n, dtype=np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint64))
        index, h, t = scratch.hash
        numpy_fill(flat, key, index[:n], h[:n], t[:n])
        return out

    # -- declared operations (see densenn.kernels.ops) -------------------------------------
    # A large pass runs in row blocks on all cores (rows are independent; see threads.py),
    # a small one in one call on the calling thread.
    def can(self, op) -> bool:
        """Whether this engine runs ``op`` (a RowMap needs a Numba form or a NumPy one here)."""
        if isinstance(op, RowMap):
            return (self.fused and op.numba is not None) or op.numpy is not None
        return True

    def map(self, op, arrays, scalars=(), work=None, sums=None):
        """Run Map or RowMap ``op`` over ``arrays`` (overwriting those it writes); with
        ``sums``, also sums = Σ rows of the first written array (overwritten)."""
        if op.has_rows:
            _check_rows(op, arrays)
        if op.has_scalars:
            _check_scalars(op, arrays)
        if isinstance(op, RowMap):
            return self._map_rows(op, arrays, scalars, work, sums)
        # (no generator expressions on this path: on CPython 3.11 each leaves a cycle for the
        # garbage collector, which the allocation-free step tests count)
        if not (self.fused and op.cpu == "numba" and _contiguous(arrays)):
            self._numpy(op, arrays, scalars, work)
            if sums is not None:
                self.sum_rows(arrays[op.first_written], sums)
            return
        coef = self._coef(arrays[0].dtype, scalars)
        if op.cpu_prepass is not None:
            target = arrays[op.first_written]
            self._in_blocks(target, lambda lo, hi: op.cpu_prepass(target[lo:hi]))
        if op.has_cols or op.has_rows or (sums is not None and arrays[0].ndim == 2):
            self._map_2d(map_kernel(op, arrays[0].dtype, "rows" if sums is None else "sums"), op, arrays, coef, sums)
            return
        flat = [x.reshape(-1) for x in arrays]
        if op.has_scalars:
            self._map_flat_scalars(op, flat, coef)
            return
        omp = self._omp(op, flat[0])
        if omp is not None:
            omp(*flat, coef, self._no_sums[flat[0].dtype])
            return
        kernel = map_kernel(op, flat[0].dtype, "flat")
        no_sums = self._no_sums[flat[0].dtype]
        self._in_blocks(flat[0], lambda lo, hi: kernel(*[x[lo:hi] for x in flat], coef, no_sums))

    def _map_flat_scalars(self, op, flat, coef):
        """A flat map with ``scalar`` arrays, which every row block gets whole."""
        split = op.splits
        x = flat[split.index(True)]
        no_sums = self._no_sums[x.dtype]
        omp = self._omp(op, x)
        if omp is not None:
            omp(*flat, coef, no_sums)
            return
        kernel = map_kernel(op, x.dtype, "flat")
        if not self._blocks.splits(x):
            kernel(*flat, coef, no_sums)
            return
        self._blocks.run(lambda lo, hi: kernel(*[a[lo:hi] if s else a for a, s in zip(flat, split)], coef, no_sums),
                         x.shape[0])

    def _in_blocks(self, x, fn):
        if self._blocks.splits(x):
            self._blocks.run(fn, x.shape[0])
        else:
            fn(0, x.shape[0])

    def _numpy(self, op, arrays, scalars, work):
        """``op``'s NumPy form, in row blocks for a large pass (``col`` arrays whole)."""
        split = op.splits
        rows = arrays[split.index(True)] if True in split else None
        if rows is None or not getattr(op, "cpu_blocks", True) or not self._blocks.splits(rows):
            op.numpy(self, arrays, scalars, work)
            return
        self._blocks.run(lambda lo, hi: op.numpy(self, [x[lo:hi] if s else x for x, s in zip(arrays, split)],
                                                 scalars, _rows(work, lo, hi)), rows.shape[0])

    def _map_2d(self, kernel, op, arrays, coef, sums, typed=False):
        """A rows × columns kernel, in row blocks; the blocks' column sums go into rows of a kept
        scratch (_partial_sums), summed into ``sums`` at the end."""
        split = op.splits
        z = arrays[op.first_written]
        want = sums is not None and sums.shape == z.shape[1:] and sums.dtype == z.dtype and \
            sums.flags.c_contiguous
        extra = coef if typed else (coef,)
        if self._blocks.splits(z):
            bounds = self._blocks.bounds(z.shape[0])
            part: Any = self._partial_sums(z.dtype, z.shape[1], len(bounds) - 1) if want else None
            self._blocks.run(lambda lo, hi: kernel(*[x[lo:hi] if s else x for x, s in zip(arrays, split)], *extra,
                                                   part[bounds.index(lo)] if want else self._no_sums[z.dtype]),
                             z.shape[0])
            if want:
                np.add.reduce(part, axis=0, out=sums)
        else:
            if want:
                sums.fill(0)
            kernel(*arrays, *extra, sums if want else self._no_sums[z.dtype])
        if sums is not None and not want:
            self.sum_rows(z, sums)

    def _map_rows(self, op, arrays, scalars, work, sums):
        if not (self.fused and op.numba is not None):
            if op.numpy is None:
                raise DensennError(f"operation {op.name!r} has no NumPy form and this engine runs without Numba")
            self._numpy(op, arrays, scalars, work)
            if sums is not None:
                self.sum_rows(arrays[op.first_written], sums)
            return
        t = arrays[0].dtype.type
        typed = [t(s) for s in scalars]
        if op.has_whole:      # an accumulator: one call, no blocks
            z = arrays[op.first_written]
            row_kernel(op)(*arrays, *typed, self._no_sums[z.dtype] if sums is None else sums)
            return
        self._map_2d(row_kernel(op), op, arrays, typed, sums, typed=True)

    def reduce(self, op, arrays, scalars, acc, work=None):
        """acc[0] += Σ of Sum ``op``'s terms over ``arrays`` (its NumPy form)."""
        acc[0] += op.numpy(self, arrays, scalars, work)
        return acc

    def _partial_sums(self, dtype, m: int, parts: int):
        """Zeroed (parts, m) scratch for the blocks' column sums, kept for the next step."""
        key = (np.dtype(dtype), m)
        partials = self._scratch.partials
        if key not in partials or partials[key].shape[0] < parts:
            partials[key] = self.zeros((parts, m), dtype)
        part = partials[key][:parts]
        part.fill(0)
        return part

    def _coef(self, dtype, values):
        """The scalars of a flat kernel, written into this thread's vector for them."""
        key = (dtype, len(values))
        coefs = self._scratch.coefs
        if key not in coefs:
            coefs[key] = np.empty(max(len(values), 1), dtype)
        coef = coefs[key]
        coef[:len(values)] = values
        return coef

    def _omp(self, op, x):
        """The OpenMP form of a flat map over a large enough x when MKL runs on GNU OpenMP, else None."""
        if x.size < cpu_fused.OMP_MIN or self.threads == 1 or self._mkl is None or self._mkl.threading != "gnu":
            return None
        return cpu_fused.omp_kernel(op, x.dtype)
