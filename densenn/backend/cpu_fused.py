"""Fused CPU kernels, compiled with Numba when it is installed.

NumPy runs each elementwise step as its own pass over memory: the Adam update
is a dozen passes, bias + ReLU two, the ReLU backward two. These kernels do each
in one pass. They are compiled lazily, per activation, the first time a network
uses them, and are an optimisation only: ``CPUEngine(fused=False)`` (engine name
``"cpu:numpy"``) runs the pure NumPy path, and the tests compare the two.

Only activations without transcendental functions are fused: NumPy's own SIMD
``tanh``/``exp`` beat a scalar loop calling libm, so sigmoid, tanh, softplus and
ELU stay on the NumPy kernels. The delta of tanh and sigmoid is split: NumPy's
``tanh`` pass, then one fused pass for the arithmetic around it.
"""
from __future__ import annotations

import math
import os

import numpy as np

try:
    import numba
except ImportError:  # the pure NumPy path needs nothing more
    numba = None

AVAILABLE = numba is not None
#: activations whose fused kernels beat NumPy (no libm call per element; softmax rows
#: are short and NumPy would need broadcasting temporaries for them)
FUSED_ACTIVATIONS = {"relu", "leaky_relu", "linear", "softmax"}

_cache: dict = {}


def _njit(fn):
    # error_model="numpy": no ZeroDivisionError checks, which would block SIMD in the loops
    return numba.njit(cache=False, nogil=True, boundscheck=False, error_model="numpy")(fn)


def _bias_softmax_row(z, b, a, i):
    """z[i] += b; a[i] = softmax(z[i]): one row, shared by the softmax and the output kernels."""
    m = z.shape[1]
    top = -math.inf
    for j in range(m):
        v = z[i, j] + b[j]
        z[i, j] = v
        top = max(top, v)
    total = 0.0
    for j in range(m):
        e = math.exp(z[i, j] - top)    # shifted by the row max: no overflow
        a[i, j] = e
        total += e
    scale = 1.0 / total
    for j in range(m):
        a[i, j] *= scale


if AVAILABLE:   # the kernels below call it; Numba compiles it (lazily) into them
    _bias_softmax_row = _njit(_bias_softmax_row)


def _bias_softmax(z, b, a, p):
    for i in range(z.shape[0]):
        _bias_softmax_row(z, b, a, i)


def _softmax_delta(z, a, p, db):
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


def _softmax_crossentropy(z, b, a, labels, scale, eps, db, acc):
    # The output layer of a classifier in one pass per row: bias, softmax, the loss
    # and the hit of its label, and delta = scale·(a - onehot) with its column sums.
    n, m = z.shape
    for j in range(m):
        db[j] = 0.0
    loss = 0.0
    hits = 0
    for i in range(n):
        _bias_softmax_row(z, b, a, i)
        best = 0
        for j in range(1, m):
            if a[i, j] > a[i, best]:    # the first of equal maxima, as numpy.argmax
                best = j
        label = labels[i]
        loss -= math.log(max(a[i, label], eps))
        hits += best == label
        for j in range(m):
            d = (a[i, j] - (1.0 if j == label else 0.0)) * scale
            z[i, j] = d
            db[j] += d
    acc[0] += loss
    acc[1] += hits


def head_kernel():
    """softmax + cross-entropy against class labels + delta + ∇b, in one pass (see CPUEngine)."""
    if "head" not in _cache:
        _cache["head"] = _njit(_softmax_crossentropy)
    return _cache["head"]


def activation_kernels(act):
    """(bias_activ, delta) kernels for an activation, compiled once per class.

    ``delta(z, a, p, db)`` writes z = f'(z) ∘ a and, when db has z's width, adds the rows
    of the new z to db in the same pass (an empty db: no sums; the caller zeroes db, so that
    blocks of rows can add up into one db)."""
    key = type(act)
    if key not in _cache and act.name == "softmax":
        _cache[key] = (_njit(_bias_softmax), _njit(_softmax_delta))
    if key not in _cache:
        f = _njit(act.py_activ)
        fp = _njit(act.py_prime)

        def bias_activ(z, b, a, p):
            n, m = z.shape
            for i in range(n):
                for j in range(m):
                    v = z[i, j] + b[j]
                    z[i, j] = v
                    a[i, j] = f(v, p)

        def delta(z, a, p, db):
            n, m = z.shape
            sums = db.shape[0] == m      # an empty db: no sums
            for i in range(n):
                for j in range(m):
                    # cast: a literal 1.0/0.0 in fp would turn a float32 pass into float64
                    d = z.dtype.type(fp(z[i, j], p)) * a[i, j]
                    z[i, j] = d
                    if sums:
                        db[j] += d

        _cache[key] = (_njit(bias_activ), _njit(delta))
    return _cache[key]


def delta_tail_kernel(act):
    """z = act.py_delta_tail(z, g, p) over a 2-D z and g: the second part of a split delta.

    Like the delta of ``activation_kernels``, it also adds the rows of the new z to db when
    db has z's width (an empty db: no sums): ∇b in the same pass, not a second one."""
    key = (type(act), "tail")
    if key not in _cache:
        tail = _njit(act.py_delta_tail)

        def kernel(z, g, p, db):
            n, m = z.shape
            sums = db.shape[0] == m      # an empty db: no sums
            for i in range(n):
                for j in range(m):
                    d = z.dtype.type(tail(z[i, j], g[i, j], p))     # (sigmoid's tail has a 0.25)
                    z[i, j] = d
                    if sums:
                        db[j] += d

        _cache[key] = _njit(kernel)
    return _cache[key]


def _adam(w, g, m, v, coef):
    # The scalars come in one vector ``coef`` of the arrays' dtype, in the order unpacked
    # below (CPUEngine.adam_update fills it): converting nine
    # Python floats to NumPy scalars for every call cost more than a bias's whole update.
    # np.sqrt keeps float32 as float32 (math.sqrt and float literals would promote to
    # float64 and halve the SIMD width).
    step, eps, beta1, beta2, one_minus_beta1, one_minus_beta2 = coef[0], coef[1], coef[2], coef[3], coef[4], coef[5]
    weight_decay, keep, tiny = coef[6], coef[7], coef[8]
    # Moments below the smallest normal number are flushed to zero: the first moment of a
    # weight whose gradient stays zero (a dead ReLU, an always-black pixel) decays as 0.9^t
    # into subnormal numbers within a few epochs, and x86 computes on those a hundred
    # times slower; on MNIST they made every epoch slower than the one before.
    zero = tiny - tiny      # in the arrays' dtype: a 0.0 literal would make mi, vi float64
    for i in range(w.shape[0]):
        gi = g[i] + weight_decay * w[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        if abs(mi) < tiny:
            mi = zero
        if vi < tiny:
            vi = zero
        m[i] = mi
        v[i] = vi
        w[i] = keep * w[i] - step * mi / (np.sqrt(vi) + eps)


def _sgd_momentum(w, g, v, coef, nesterov):
    lr, momentum, weight_decay, tiny = coef[0], coef[1], coef[2], coef[3]     # see _adam
    zero = tiny - tiny      # see _adam
    for i in range(w.shape[0]):
        gi = g[i] + weight_decay * w[i]
        vi = momentum * v[i] - lr * gi
        if abs(vi) < tiny:      # subnormal velocities: see _adam
            vi = zero
        v[i] = vi
        if nesterov:
            w[i] += momentum * vi - lr * gi
        else:
            w[i] += vi


def optimizer_kernels():
    """(adam, sgd_momentum) over flat (1-D) parameter views; plain SGD is a BLAS axpy."""
    if "optim" not in _cache:
        _cache["optim"] = (_njit(_adam), _njit(_sgd_momentum))
    return _cache["optim"]


#: parameters with fewer elements than this are updated on one thread
OMP_MIN = 1 << 16


def omp_optimizer_kernels():
    """(adam, sgd_momentum) that update blocks of their arrays on Numba's OpenMP threads,
    or None where Numba's threading layer is not (or cannot be) OpenMP.

    For MKL running on GNU OpenMP: both then draw on libgomp's one pool of threads,
    which are still awake after the ∇w GEMM that precedes every update. Threads of
    our own (``cpu_threads``) would meet those spinning threads and lose the core to
    them: splitting MNIST's first-layer Adam that way made the step slower, through
    OpenMP it made it 4% faster. Chooses Numba's "omp" layer unless the user chose
    another (``$NUMBA_THREADING_LAYER``) or Numba's threads already run on another.
    """
    if "omp" not in _cache:
        _cache["omp"] = _compile_omp_kernels()
        if _cache["omp"] is not None and hasattr(os, "register_at_fork"):
            # GNU OpenMP cannot start threads in a forked child (it waits for the parent's):
            # children update on one thread
            os.register_at_fork(after_in_child=lambda: _cache.__setitem__("omp", None))
    return _cache["omp"]


def _compile_omp_kernels():
    if not AVAILABLE or numba.config.THREADING_LAYER not in ("default", "omp"):
        return None
    numba.config.THREADING_LAYER = "omp"    # read at Numba's first parallel launch only
    adam, sgd_momentum = optimizer_kernels()

    def adam_blocks(w, g, m, v, coef):
        n, parts = w.shape[0], numba.get_num_threads()
        for p in numba.prange(parts):
            lo, hi = n * p // parts, n * (p + 1) // parts
            adam(w[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], coef)

    def sgd_momentum_blocks(w, g, v, coef, nesterov):
        n, parts = w.shape[0], numba.get_num_threads()
        for p in numba.prange(parts):
            lo, hi = n * p // parts, n * (p + 1) // parts
            sgd_momentum(w[lo:hi], g[lo:hi], v[lo:hi], coef, nesterov)

    jit = numba.njit(parallel=True, nogil=True, cache=False, error_model="numpy")
    kernels = jit(adam_blocks), jit(sgd_momentum_blocks)
    try:
        one = np.ones(4, np.float32)
        kernels[0](one, one.copy(), one.copy(), one.copy(), np.full(9, 0.5, np.float32))   # launches the threads
        if numba.threading_layer() != "omp":
            return None
    except (ValueError, ImportError, OSError):      # no OpenMP layer loads here
        return None
    return kernels
