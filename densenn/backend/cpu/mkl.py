"""Intel MKL's GEMM for the CPU engine, when MKL is installed (``pip install "densenn[mkl]"``).

On the thin products of a small network (batch 128 against a few hundred units)
MKL's ``cblas_?gemm`` runs about 20% faster than the OpenBLAS that NumPy and SciPy
ship, and the GEMMs are half of such a network's training step. MKL is called
through ``ctypes`` on its single runtime library (``libmkl_rt``), row-major, so
no transposition trick is needed: leading dimensions come from the row strides.

With Numba installed the call goes through a compiled stub that reads the
arrays' addresses and strides itself (about 5 µs a call, against 12 µs for
ctypes from Python, which matters for the small layers' GEMMs).

MKL's threads come from GNU OpenMP when ``libgomp`` is there: its idle threads
sleep after a short spin, where Intel OpenMP's spin for 200 ms and would take a
core from whatever runs next (NumPy, Numba kernels, another library).
``$DENSENN_BLAS`` chooses: ``auto`` (MKL when found), ``mkl`` (required) or
``openblas`` (SciPy's BLAS even when MKL is installed).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

import numpy as np

from densenn.config import setting
from densenn.errors import DensennError

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_THREADING_GNU, _THREADING_INTEL = 3, 0
BLAS_CHOICES = ("auto", "mkl", "openblas")


def _candidates() -> list[str]:
    # pip's mkl wheel puts libmkl_rt into <prefix>/lib, which the loader does not search
    found = []
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX") or ""]):
        if prefix:
            found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    name = ctypes.util.find_library("mkl_rt")
    return found + ([name] if name else [])


def _has_libgomp() -> bool:
    try:
        ctypes.CDLL("libgomp.so.1")
        return True
    except OSError:
        return False


def _address(x) -> int:
    # not x.ctypes.data: that object holds a reference cycle, garbage left by every call
    return x.__array_interface__["data"][0]


#: argument types of the cblas routines used, "S" standing for the dtype's scalar;
#: pointers are size_t, which Numba can pass
_INT, _PTR = ctypes.c_int, ctypes.c_size_t
_SIGNATURES = {
    "gemm": [_INT] * 6 + ["S", _PTR, _INT, _PTR, _INT, "S", _PTR, _INT],
    "axpy": [_INT, "S", _PTR, _INT, _PTR, _INT],
    "ger": [_INT] * 3 + ["S", _PTR, _INT, _PTR, _INT, _PTR, _INT],
}


def _cblas(lib, routine, prefix, scalar):
    """cblas_<prefix><routine> from lib, declared (a fresh function object per signature)."""
    fn = getattr(lib, f"cblas_{prefix}{routine}")
    fn.restype = None
    fn.argtypes = [scalar if t == "S" else t for t in _SIGNATURES[routine]]
    return fn


def _numba_vector_ops(saxpy, daxpy, sger, dger):
    import numba

    @numba.njit(nogil=True, cache=False)
    def axpy(alpha, x, y):
        if y.itemsize == 4:
            saxpy(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
        else:
            daxpy(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)

    @numba.njit(nogil=True, cache=False)
    def ger(alpha, x, y, a):
        m, n = a.shape
        lda = max(1, a.strides[0] // a.itemsize)
        if a.itemsize == 4:
            sger(_ROW_MAJOR, m, n, alpha, x.ctypes.data, 1, y.ctypes.data, 1, a.ctypes.data, lda)
        else:
            dger(_ROW_MAJOR, m, n, alpha, x.ctypes.data, 1, y.ctypes.data, 1, a.ctypes.data, lda)

    return axpy, ger


#: what a GEMM call reports: done, operand shapes that do not fit, or an operand whose
#: rows are not contiguous (a row-major cblas call cannot take it; SciPy's path can)
DONE, SHAPES, STRIDES = 0, 1, 2


def _rows_contiguous(x) -> bool:
    return x.strides[1] == x.itemsize and x.strides[0] % x.itemsize == 0 \
        and x.strides[0] >= x.shape[1] * x.itemsize


try:    # the stub compiles these two into itself; without Numba they run as Python
    import numba as _numba
except ImportError:
    _numba = None
if _numba is not None:
    _rows_contiguous = _numba.njit(nogil=True, cache=False)(_rows_contiguous)


def _check(trans_a, trans_b, a, b, c) -> int:
    """DONE when c = op(a)·op(b) fits and every operand's rows are contiguous, else SHAPES/STRIDES."""
    m, n = c.shape
    ma, ka = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    kb, nb = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if ma != m or nb != n or ka != kb:
        return SHAPES
    if not (_rows_contiguous(a) and _rows_contiguous(b) and _rows_contiguous(c)):
        return STRIDES
    return DONE


def _numba_stub(sgemm, dgemm):
    """A compiled caller: c = alpha·op(a)·op(b) + beta·c, leading dimensions from the strides.

    Checks shapes and strides itself and returns DONE, SHAPES or STRIDES: done in
    Python, those checks cost twice the call (7 µs a GEMM, 8 GEMMs a step)."""
    import numba

    check = numba.njit(nogil=True, cache=False)(_check)    # _rows_contiguous is compiled above

    @numba.njit(nogil=True, cache=False)
    def call(trans_a, trans_b, alpha, a, b, beta, c):
        status = check(trans_a, trans_b, a, b, c)
        if status != DONE:
            return status
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        size = c.itemsize
        args = (_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, m, n, k, alpha,
                a.ctypes.data, max(1, a.strides[0] // size), b.ctypes.data, max(1, b.strides[0] // size), beta,
                c.ctypes.data, max(1, c.strides[0] // size))
        if size == 4:
            sgemm(*args)
        else:
            dgemm(*args)
        return DONE

    return call


class MKLGemm:
    """``c = alpha·op(a)·op(b) + beta·c`` by ``cblas_sgemm``/``cblas_dgemm``; overwrites ``c``.

    Also ``axpy`` and ``ger``: once MKL runs the GEMMs, every threaded BLAS call of a step
    must be MKL's, or OpenBLAS's spinning threads and MKL's fight over the cores (3x slower).
    """

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        # before MKL's first call: later calls to this are ignored
        self.threading = "gnu" if _has_libgomp() else "intel"
        lib.MKL_Set_Threading_Layer(_THREADING_GNU if self.threading == "gnu" else _THREADING_INTEL)
        sgemm, saxpy, sger = (_cblas(lib, r, "s", ctypes.c_float) for r in ("gemm", "axpy", "ger"))
        dgemm, daxpy, dger = (_cblas(lib, r, "d", ctypes.c_double) for r in ("gemm", "axpy", "ger"))
        self._fn = {np.dtype(np.float32): sgemm, np.dtype(np.float64): dgemm}
        self._axpy_fn = {np.dtype(np.float32): saxpy, np.dtype(np.float64): daxpy}
        self._ger_fn = {np.dtype(np.float32): sger, np.dtype(np.float64): dger}
        try:
            self._stub = _numba_stub(sgemm, dgemm)
            self._axpy_stub, self._ger_stub = _numba_vector_ops(saxpy, daxpy, sger, dger)
        except ImportError:
            self._stub = self._axpy_stub = self._ger_stub = None
        version = ctypes.create_string_buffer(256)
        lib.mkl_get_version_string(version, 256)
        self.version = version.value.decode(errors="replace").strip()
        self._set_threads = lib.MKL_Set_Num_Threads
        self._set_local_threads = lib.MKL_Set_Num_Threads_Local
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self):
        # A forked child has none of the parent's OpenMP worker threads, and GNU OpenMP
        # waits for them forever at the next parallel region: the child's GEMMs run on
        # one thread instead (multiprocessing's "fork" children trained and then hung).
        # The forking thread's own setting, where one was made, overrides the global one
        # (a child still hung in its first GEMM after the parent's memory tests): both.
        self._set_threads(1)
        self._set_local_threads(1)

    @staticmethod
    def rows_contiguous(x) -> bool:
        """Rows of x are contiguous (any row stride): what a row-major cblas call can take."""
        return x.ndim == 2 and _rows_contiguous(x)

    def __call__(self, alpha, a, b, beta, c, trans_a: bool, trans_b: bool) -> int:
        """c = alpha·op(a)·op(b) + beta·c for 2-D operands of c's dtype; overwrites c.

        Returns DONE, or SHAPES / STRIDES (then c is untouched)."""
        if self._stub is not None:
            return self._stub(bool(trans_a), bool(trans_b), float(alpha), a, b, float(beta), c)
        status = _check(trans_a, trans_b, a, b, c)
        if status != DONE:
            return status
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        self._fn[c.dtype](_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
                          m, n, k, alpha, _address(a), max(1, a.strides[0] // a.itemsize),
                          _address(b), max(1, b.strides[0] // b.itemsize), beta,
                          _address(c), max(1, c.strides[0] // c.itemsize))
        return DONE


    def axpy(self, alpha, x, y):
        """y += alpha·x over contiguous x, y of one dtype (MKL's threads: OpenBLAS's would
        spin beside MKL's and the two pools would fight over the cores). Overwrites y."""
        if self._axpy_stub is not None:
            self._axpy_stub(float(alpha), x, y)
        else:
            self._axpy_fn[y.dtype](y.size, alpha, _address(x), 1, _address(y), 1)
        return y


    def ger(self, alpha, x, y, a):
        """a += alpha·x·yᵀ (the bias as a rank-1 update: x the ones, y the bias). Overwrites a."""
        if self._ger_stub is not None:
            self._ger_stub(float(alpha), x, y, a)
        else:
            m, n = a.shape
            self._ger_fn[a.dtype](_ROW_MAJOR, m, n, alpha, _address(x), 1, _address(y), 1, _address(a),
                                  max(1, a.strides[0] // a.itemsize))
        return a


_loaded: dict = {}


def load() -> MKLGemm | None:
    """MKL's GEMM when libmkl_rt loads here, else None (loaded once per process)."""
    if "mkl" not in _loaded:
        _loaded["mkl"] = None
        for path in _candidates():
            try:
                _loaded["mkl"] = MKLGemm(ctypes.CDLL(path), path)
                break
            except (OSError, AttributeError):
                continue
    return _loaded["mkl"]


def choose(blas: str | None) -> MKLGemm | None:
    """The GEMM for ``blas`` (None: ``$DENSENN_BLAS`` or ``auto``): MKL's, or None for SciPy's."""
    if blas is None:
        blas = setting("DENSENN_BLAS")
    blas = str(blas).strip().lower()
    if blas not in BLAS_CHOICES:
        raise DensennError(f"blas (or $DENSENN_BLAS) must be one of {', '.join(BLAS_CHOICES)}, got {blas!r}")
    if blas == "openblas":
        return None
    mkl = load()
    if mkl is None and blas == "mkl":
        raise DensennError("blas='mkl' was asked for but no libmkl_rt loads here: pip install 'densenn[mkl]'")
    return mkl
