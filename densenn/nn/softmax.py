"""Softmax: the row-wise activation (one distribution per sample), declared as RowMaps.

Its operations are a C body per row (both GPU engines), Numba forms over rows (the CPU
engine's bias + softmax and the Jacobian-vector delta, ∇b summed on the way) and NumPy
kernels. Registered among the activations on import (densenn imports it).
"""
from __future__ import annotations

import math

import numpy as np

from densenn.kernels.numpy_eval import per_row
from densenn.kernels.ops import RowMap
from densenn.nn.activation import Activation, ActivationOps, register_activation


class Softmax(Activation):
    """Row-wise softmax (one distribution per sample).

    Its Jacobian is not diagonal: ``delta`` computes the full product
    ``s ∘ (g - Σ s∘g)``; ``prime`` gives only the diagonal ``s(1 - s)``. Paired
    with categorical cross-entropy the network skips both and uses ``a - y``.
    """

    name = "softmax"
    work_kind = "row"
    elementwise = False

    def np_activ(self, z, a, work=None):
        work = np.empty((z.shape[0], 1), z.dtype) if work is None else work
        np.max(z, axis=1, keepdims=True, out=work)
        per_row(np.subtract, z, work[:, 0], a)          # shifted by the row max: no overflow
        np.exp(a, out=a)
        np.sum(a, axis=1, keepdims=True, out=work)
        return per_row(np.divide, a, work[:, 0], a)

    def np_prime(self, z, work=None):
        self.np_activ(z, z, work)
        # diagonal of the Jacobian: s(1 - s) = 1/4 - (s - 1/2)², in place
        np.subtract(z, 0.5, out=z)
        np.square(z, out=z)
        return np.subtract(0.25, z, out=z)

    def np_delta(self, z, a, work=None):
        work = np.empty((z.shape[0], 1), z.dtype) if work is None else work
        self.np_activ(z, z, work)                        # z = s
        np.einsum("ij,ij->i", z, a, out=work[:, 0])      # Σ_j s_j g_j per sample
        per_row(np.subtract, a, work[:, 0], a)          # a is scratch once read
        return np.multiply(z, a, out=z)


_SOFTMAX_C = """
T top = z[0];
for (I j = 1; j < cols; ++j) top = fmax(top, z[j]);
T total = (T)0;
for (I j = 0; j < cols; ++j) { const T e = exp(z[j] - top); OUT[j] = e; total += e; }
for (I j = 0; j < cols; ++j) OUT[j] /= total;
"""


def softmax_row(njit):
    def row(z, b, a, i, bias):
        """a[i] = softmax(z[i] (+ b, written back into z when bias)): shifted by the row max."""
        m = z.shape[1]
        top = -math.inf
        for j in range(m):
            v = z[i, j] + b[j] if bias else z[i, j]
            z[i, j] = v
            top = max(top, v)
        total = 0.0
        for j in range(m):
            e = math.exp(z[i, j] - top)
            a[i, j] = e
            total += e
        scale = 1.0 / total
        for j in range(m):
            a[i, j] *= scale
    return njit(row)


def _softmax_bias_activ(njit):
    row = softmax_row(njit)

    def kernel(z, b, a, p, db):
        for i in range(z.shape[0]):
            row(z, b, a, i, True)
    return kernel


def _softmax_delta(njit):
    def kernel(z, a, p, db):
        # z = s ∘ (g - Σ_j s_j g_j), s = softmax(z), g = a; db += Σ rows of z when db has z's width
        n, m = z.shape
        sums = db.shape[0] == m
        for i in range(n):
            top = -math.inf
            for j in range(m):
                top = max(top, z[i, j])
            total = 0.0
            for j in range(m):
                e = math.exp(z[i, j] - top)
                z[i, j] = e
                total += e
            dot = 0.0
            for j in range(m):
                z[i, j] /= total
                dot += z[i, j] * a[i, j]
            for j in range(m):
                z[i, j] *= a[i, j] - dot
                if sums:
                    db[j] += z[i, j]
    return kernel


def _softmax_np(method: str, bias: bool = False):
    kept = Softmax._with_param(0.0)
    if bias:
        def run(engine, arrays, scalars, work):
            z, b, a = arrays
            engine.add_bias(z, b)
            getattr(kept, method)(z, a, work)
    elif method == "np_prime":
        def run(engine, arrays, scalars, work):
            getattr(kept, method)(arrays[0], work)
    else:
        def run(engine, arrays, scalars, work):
            getattr(kept, method)(arrays[0], arrays[1], work)
    return run


Softmax.ops = ActivationOps(
    RowMap("softmax_activ", "z a", writes="a", scalars="p", c_body=_SOFTMAX_C.replace("OUT", "a"),
           numpy=_softmax_np("np_activ")),
    RowMap("softmax_bias_activ", "z b:col a", writes="z a", scalars="p", numba=_softmax_bias_activ,
           c_body="for (I j = 0; j < cols; ++j) z[j] += b[j];\n" + _SOFTMAX_C.replace("OUT", "a"),
           numpy=_softmax_np("np_activ", bias=True)),
    RowMap("softmax_prime", "z", writes="z", scalars="p", numpy=_softmax_np("np_prime"),
           c_body=_SOFTMAX_C.replace("OUT", "z") + "for (I j = 0; j < cols; ++j) z[j] = z[j] * ((T)1 - z[j]);\n"),
    RowMap("softmax_delta", "z a", writes="z", scalars="p", numba=_softmax_delta, numpy=_softmax_np("np_delta"),
           c_body=_SOFTMAX_C.replace("OUT", "z") + """T dot = (T)0;
for (I j = 0; j < cols; ++j) dot += z[j] * a[j];
for (I j = 0; j < cols; ++j) z[j] = z[j] * (a[j] - dot);
"""))


register_activation(Softmax)
