"""The CPU engine: NumPy arrays, SciPy's BLAS in place, NumPy kernels with ``out=``.

Row-major arrays meet column-major BLAS through transposition: the C-ordered
``(m, n)`` array ``c`` is, as ``c.T``, a Fortran-ordered ``(n, m)`` matrix with no
copy, and ``c = op(a)·op(b)`` is ``cᵀ = op(b)ᵀ·op(a)ᵀ``. SciPy's ``?gemm`` writes in
place only into a Fortran-ordered ``c`` of the right dtype; for anything else it
returns a copy and leaves ``c`` alone, so every call checks that it got ``c`` back.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import blas

from densenn.errors import DensennError

_GEMM = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}
_AXPY = {np.dtype(np.float32): blas.saxpy, np.dtype(np.float64): blas.daxpy}


class CPUEngine:
    """NumPy + SciPy BLAS. Arrays are C-contiguous ``numpy.ndarray``."""

    name = "cpu"

    def __init__(self):
        self.uploads = 0  # host→engine copies, counted like the device engines do

    def __repr__(self):
        return "CPUEngine()"

    # -- memory ------------------------------------------------------------
    def supports(self, dtype) -> bool:
        return np.dtype(dtype) in _GEMM

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def to_engine(self, host, dtype=None):
        # Training never writes its inputs, so a correctly typed array is used as it is.
        return np.ascontiguousarray(host, dtype=dtype)

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
        ct = c.T
        out = _GEMM[c.dtype](alpha, b.T, a.T, beta=beta, c=ct,
                             trans_a=int(trans_b), trans_b=int(trans_a), overwrite_c=1)
        if out is not ct:
            raise DensennError(
                f"gemm could not write in place into c ({c.shape}, {c.dtype}, "
                f"C-contiguous={c.flags.c_contiguous}); operands must share c's dtype")
        return c

    def add_bias(self, z, b):
        return np.add(z, b, out=z)

    def sum_rows(self, x, out):
        return np.sum(x, axis=0, out=out)

    def axpy(self, alpha, x, y):
        if x.flags.c_contiguous and y.flags.c_contiguous and x.dtype == y.dtype:
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
        return np.take(src, idx, axis=0, out=out)

    # -- activations ---------------------------------------------------------
    def activ(self, act, z, a, work=None):
        return act.np_activ(z, a, work)

    def bias_activ(self, act, z, b, a, work=None):
        np.add(z, b, out=z)
        return act.np_activ(z, a, work)

    def prime(self, act, z, work=None):
        return act.np_prime(z, work)

    def delta(self, act, z, a, work=None):
        return act.np_delta(z, a, work)

    # -- costs and metrics ---------------------------------------------------
    def cost_value(self, cost, a, y, work, acc):
        acc[0] += cost.np_value(a, y, work)
        return acc

    def cost_gradient(self, cost, a, y, out, scale, work):
        cost.np_gradient(a, y, out, scale, work)
        return out

    def diff(self, a, y, out, scale):
        np.subtract(a, y, out=out)
        return np.multiply(out, scale, out=out)

    def count_correct(self, a, labels, work, acc):
        if a.shape[1] == 1:
            np.greater(a[:, 0], 0.5, out=work)
        else:
            np.argmax(a, axis=1, out=work)
        np.equal(work, labels, out=work)
        acc[0] += np.count_nonzero(work)
        return acc

    # -- optimizers ------------------------------------------------------------
    def sgd_update(self, w, g, v, lr, momentum, nesterov, weight_decay):
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
