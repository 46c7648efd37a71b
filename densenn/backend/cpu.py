"""The CPU engine: NumPy arrays, SciPy's BLAS in place, NumPy kernels with ``out=``.

Row-major arrays meet column-major BLAS through transposition: the C-ordered
``(m, n)`` array ``c`` is, as ``c.T``, a Fortran-ordered ``(n, m)`` matrix with no
copy, and ``c = op(a)·op(b)`` is ``cᵀ = op(b)ᵀ·op(a)ᵀ``. SciPy's ``?gemm`` writes in
place only into a Fortran-ordered ``c`` of the right dtype; for anything else it
returns a copy and leaves ``c`` alone, so every call checks that it got ``c`` back.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from scipy.linalg import blas

from densenn.backend import cpu_fused, cpu_mkl, cpu_threads
from densenn.errors import DensennError, check_positive_int

_GEMM = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}
_AXPY = {np.dtype(np.float32): blas.saxpy, np.dtype(np.float64): blas.daxpy}
_GER = {np.dtype(np.float32): blas.sger, np.dtype(np.float64): blas.dger}
#: the smallest normal number per dtype: the fused optimizers flush moments below it
_TINY = {dt: dt.type(np.finfo(dt).tiny) for dt in _GEMM}
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


def _rows(x, lo, hi):
    """Rows lo:hi of an optional buffer (an activation's working memory may be None)."""
    return None if x is None else x[lo:hi]


class CPUEngine:
    """NumPy + BLAS. Arrays are C-contiguous ``numpy.ndarray``.

    ``fused`` (default: when Numba is installed and ``$DENSENN_NUMBA`` is not
    ``0``) runs bias+activation, delta and the optimizer updates as one-pass
    Numba kernels (see ``cpu_fused``); ``fused=False`` is the pure NumPy path.
    ``blas`` picks the GEMM: ``"auto"`` (default, or ``$DENSENN_BLAS``) uses
    Intel MKL when it is installed (see ``cpu_mkl``), ``"openblas"`` SciPy's
    BLAS, ``"mkl"`` insists on MKL. ``threads`` (default ``$DENSENN_THREADS``,
    else every usable core) is how many row blocks a large elementwise pass is
    split into (see ``cpu_threads``); the BLAS keeps its own thread count.
    """

    name = "cpu"
    #: labels and batch indices are NumPy's native index type: take/argmax then copy nothing
    index_dtype = np.dtype(np.intp)

    def __init__(self, fused: bool | None = None, blas: str | None = None, threads: int | None = None):
        if fused is None:
            fused = cpu_fused.AVAILABLE and os.environ.get("DENSENN_NUMBA", "1") != "0"
        if fused and not cpu_fused.AVAILABLE:
            raise DensennError("the fused CPU kernels need Numba: pip install numba")
        self.fused = bool(fused)
        self._mkl = cpu_mkl.choose(blas)
        self.blas = "mkl" if self._mkl is not None else "openblas"
        self.uploads = 0  # host→engine copies, counted like the device engines do
        # large elementwise passes run in row blocks on every core (see cpu_threads)
        self.set_threads(threads)
        self._ones: dict = {}  # dtype -> a vector of ones, grown to the largest batch seen
        # the db a delta kernel gets when no column sums are wanted
        self._no_sums = {dt: np.empty(0, dt) for dt in _GEMM}
        self._scratch = _Scratch()

    def set_threads(self, threads: int | None = None) -> None:
        """Split large elementwise passes into ``threads`` row blocks (None: ``$DENSENN_THREADS``,
        else every usable core; 1 keeps them on the calling thread)."""
        name = "threads"
        if threads is None:
            name, env = "$DENSENN_THREADS", os.environ.get("DENSENN_THREADS", "").strip()
            if env and not env.isdigit():
                raise DensennError(f"$DENSENN_THREADS must be a positive integer, got {env!r}")
            threads = int(env) if env else cpu_threads.usable_cores()
        self._blocks = cpu_threads.RowBlocks(check_positive_int(name, threads))

    @property
    def threads(self) -> int:
        return self._blocks.threads

    def __repr__(self):
        return f"CPUEngine(fused={self.fused}, blas={self.blas!r}, threads={self._blocks.threads})"

    def _fuses(self, act, *arrays) -> bool:
        return self.fused and act.name in cpu_fused.FUSED_ACTIVATIONS and \
            all(x.flags.c_contiguous for x in arrays)

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

    # -- activations -----------------------------------------------------------
    # A large pass runs in row blocks on all cores (rows are independent; see cpu_threads),
    # a small one in one call on the calling thread.
    def activ(self, act, z, a, work=None):
        if self._blocks.splits(z):
            self._blocks.run(lambda lo, hi: act.np_activ(z[lo:hi], a[lo:hi], _rows(work, lo, hi)), z.shape[0])
            return a
        return act.np_activ(z, a, work)

    def bias_activ(self, act, z, b, a, work=None):
        if self._blocks.splits(z):
            self._blocks.run(lambda lo, hi: self._bias_activ(act, z[lo:hi], b, a[lo:hi], _rows(work, lo, hi)),
                             z.shape[0])
        else:
            self._bias_activ(act, z, b, a, work)
        return a

    def _bias_activ(self, act, z, b, a, work):
        if self._fuses(act, z, a):
            cpu_fused.activation_kernels(act)[0](z, b, a, z.dtype.type(act.param))
        else:
            self.add_bias(z, b)
            act.np_activ(z, a, work)

    def prime(self, act, z, work=None):
        if self._blocks.splits(z):
            self._blocks.run(lambda lo, hi: act.np_prime(z[lo:hi], _rows(work, lo, hi)), z.shape[0])
            return z
        return act.np_prime(z, work)

    def delta(self, act, z, a, work=None, db=None):
        # Where a Numba kernel does the delta, it adds up ∇b on the way; row blocks add
        # theirs into rows of a kept scratch (_partial_sums), summed into db at the end; the
        # NumPy path sums after.
        kernel = self._delta_kernel(act, z, a)
        sums = kernel is not None and db is not None and db.shape == z.shape[1:] and db.dtype == z.dtype and \
            db.flags.c_contiguous
        if self._blocks.splits(z):
            bounds = self._blocks.bounds(z.shape[0])
            part = self._partial_sums(z.dtype, z.shape[1], len(bounds) - 1) if sums else None
            self._blocks.run(lambda lo, hi: self._delta(act, kernel, z[lo:hi], a[lo:hi], _rows(work, lo, hi),
                                                        part[bounds.index(lo)] if sums else None), z.shape[0])
            if sums:
                np.add.reduce(part, axis=0, out=db)
        else:
            if sums:
                db.fill(0)
            self._delta(act, kernel, z, a, work, db if sums else None)
        if db is not None and not sums:
            self.sum_rows(z, db)
        return z

    def _partial_sums(self, dtype, m: int, parts: int):
        """Zeroed (parts, m) scratch for the blocks' column sums, kept for the next step."""
        key = (np.dtype(dtype), m)
        partials = self._scratch.partials
        if key not in partials or partials[key].shape[0] < parts:
            partials[key] = self.zeros((parts, m), dtype)
        part = partials[key][:parts]
        part.fill(0)
        return part

    def _delta_kernel(self, act, z, a):
        """(head, kernel) of the Numba delta for this activation and these arrays, else None
        (the NumPy path). ``head`` is NumPy's SIMD tanh pass before a tail kernel, or None."""
        if self._fuses(act, z, a):
            return None, cpu_fused.activation_kernels(act)[1]
        if self.fused and act.py_delta_tail is not None and z.flags.c_contiguous and a.flags.c_contiguous:
            return act.np_delta_head, cpu_fused.delta_tail_kernel(act)
        return None

    def _delta(self, act, kernel, z, a, work, db):
        """The delta pass over rows of z (row views of a C-contiguous z keep its kernel); with
        db (zeroed by the caller) the kernel adds their column sums to it."""
        if kernel is None:
            act.np_delta(z, a, work)
            return
        head, fn = kernel
        if head is not None:
            head(z)
        fn(z, a, z.dtype.type(act.param), self._no_sums[z.dtype] if db is None else db)

    # -- costs and metrics ---------------------------------------------------
    def cost_value(self, cost, a, y, work, acc):
        acc[0] += cost.np_value(a, y, work)
        return acc

    def cost_gradient(self, cost, a, y, out, scale, work):
        cost.np_gradient(a, y, out, scale, work)
        return out

    @property
    def fuses_softmax_crossentropy(self) -> bool:
        """Whether ``softmax_crossentropy`` is one kernel here (else the network calls the steps one by one)."""
        return self.fused

    def softmax_crossentropy(self, z, b, a, labels, scale, db, acc):
        """The softmax output layer with cross-entropy against class ``labels``, in one pass.

        z += b; a = softmax(z); acc[0] += Σ -ln max(a[label], eps); acc[1] += #(argmax a == label);
        z = scale·(a - onehot(labels)) (delta); db = Σ_rows delta. Overwrites z, a, db; adds into acc.
        """
        if not self.fused:
            raise DensennError("softmax_crossentropy needs the fused kernels (Numba); "
                               "check fuses_softmax_crossentropy first")
        t = z.dtype.type
        cpu_fused.head_kernel()(z, b, a, labels, t(scale), t(np.finfo(z.dtype).eps), db, acc)
        return z

    def diff(self, a, y, out, scale):
        np.subtract(a, y, out=out)
        return np.multiply(out, scale, out=out)

    def count_correct(self, a, labels, work, acc):
        if a.shape[1] == 1:
            np.greater(a[:, 0], 0.5, out=work)
        else:
            np.argmax(a, axis=1, out=work)
        # predicted - true is 0 exactly where they agree (np.equal would make a bool temporary)
        np.subtract(work, labels, out=work)
        acc[0] += work.size - np.count_nonzero(work)
        return acc

    # -- optimizers ------------------------------------------------------------
    def _coef(self, dtype, values):
        """The update kernels' scalars, written into this engine's vector for them (order: see cpu_fused._adam)."""
        key = (dtype, len(values))
        coefs = self._scratch.coefs
        if key not in coefs:
            coefs[key] = np.empty(len(values), dtype)
        coef = coefs[key]
        coef[:] = values
        return coef

    def _omp_updates(self, w):
        """The OpenMP update kernels for a large enough w when MKL runs on GNU OpenMP, else None."""
        if w.size < cpu_fused.OMP_MIN or self.threads == 1 or self._mkl is None or self._mkl.threading != "gnu":
            return None
        return cpu_fused.omp_optimizer_kernels()

    def _fused_update(self, which: int, arrays: tuple, *scalars):
        """Update kernel ``which`` (0 Adam, 1 momentum; see cpu_fused.optimizer_kernels) over
        flat parameter arrays (w first; all overwritten): on OpenMP threads, in row blocks,
        or in one call, by size."""
        omp = self._omp_updates(arrays[0])
        if omp is not None:
            omp[which](*arrays, *scalars)
            return
        kernel = cpu_fused.optimizer_kernels()[which]
        if self._blocks.splits(arrays[0]):
            self._blocks.run(lambda lo, hi: kernel(*[x[lo:hi] for x in arrays], *scalars), arrays[0].size)
        else:
            kernel(*arrays, *scalars)

    def sgd_update(self, w, g, v, lr, momentum, nesterov, weight_decay):
        # Plain SGD is one BLAS axpy below, which OpenBLAS spreads over its threads:
        # twice as fast as a one-thread fused loop for large layers.
        if self.fused and v is not None:
            coef = self._coef(w.dtype, (lr, momentum, weight_decay, _TINY[w.dtype]))
            self._fused_update(1, (w.reshape(-1), g.reshape(-1), v.reshape(-1)), coef, bool(nesterov))
            return w
        if weight_decay:
            self.axpy(weight_decay, w, g)
        if v is None:
            return self.axpy(-lr, g, w)
        np.multiply(v, momentum, out=v)
        self.axpy(-lr, g, v)
        if nesterov:
            self.axpy(momentum, v, w)
            return self.axpy(-lr, g, w)
        return self.axpy(1.0, v, w)

    def adam_update(self, w, g, m, v, step, eps, beta1, beta2, weight_decay, decay, work):
        if self.fused:
            coef = self._coef(w.dtype, (step, eps, beta1, beta2, 1.0 - beta1, 1.0 - beta2, weight_decay,
                                        1.0 - decay, _TINY[w.dtype]))
            self._fused_update(0, (w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)), coef)
            return w
        if weight_decay:
            self.axpy(weight_decay, w, g)
        if decay:
            np.multiply(w, 1.0 - decay, out=w)
        np.multiply(m, beta1, out=m)
        self.axpy(1.0 - beta1, g, m)
        np.multiply(v, beta2, out=v)
        np.square(g, out=g)                     # g is spent once m has it
        self.axpy(1.0 - beta2, g, v)
        np.sqrt(v, out=work)
        np.add(work, eps, out=work)
        np.divide(m, work, out=work)
        return self.axpy(-step, work, w)
