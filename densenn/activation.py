"""Activation functions that know their derivative.

Each activation is described once, here, in two forms that sit side by side:

* NumPy kernels (``np_activ``, ``np_prime``, ``np_delta``) that the CPU engine runs.
  They write only into the arrays they are given and allocate nothing, so a
  training step stays allocation-free.
* C expressions (``c_activ``, ``c_prime``) of the variable ``z`` (and the
  parameter ``p``) that the OpenCL and CUDA engines compile into elementwise
  kernels, including the fused backward kernel ``z = prime(z) * a``.
* Scalar Python functions (``py_activ``, ``py_prime``) of ``z`` and ``p`` that
  the CPU engine compiles with Numba, when it is installed, into the same fused
  kernels (one pass instead of NumPy's several).

The seed's contract holds for every activation:

* ``activ(z, a)`` writes f(z) into ``a`` and keeps ``z``;
* ``prime(z)`` overwrites ``z`` with f'(z);
* ``delta(z, a)`` overwrites ``z`` with f'(z) ∘ a, the backward pass's
  ``delta = prime(z) ∘ a`` (``a`` holds the signal from the layer above and may
  be overwritten as scratch).

Formulas are chosen so |z| up to 1e4 gives no overflow warning and no NaN:
sigmoid goes through tanh (as in the seed), tanh's derivative is 1 - tanh²
rather than the seed's 1/cosh², softplus uses logaddexp, ELU exponentiates only
min(z, 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from densenn.errors import DensennError, check_choice, describe


class Activation:
    """Base class: an activation function and its derivative.

    ``param`` is the activation's one hyper-parameter where it has one (the
    slope of leaky ReLU, the alpha of ELU); ``work_kind`` says what working
    memory a training layer must give it: ``None`` (none), ``"full"`` (an array
    shaped like ``z``) or ``"row"`` (one value per sample, shape ``(batch, 1)``).
    """

    name: str = ""
    param: float = 0.0
    work_kind: str | None = None
    #: True when f'(z) is elementwise; softmax's Jacobian is not.
    elementwise: bool = True
    c_activ: str = ""
    c_prime: str = ""
    py_activ = None   # scalar f(z, p) for the Numba kernels; None for softmax
    py_prime = None
    #: for an f' built on a transcendental function (tanh, sigmoid), the delta in two parts:
    #: ``np_delta_head(z)``, NumPy's SIMD pass(es) z → t in place, then ``py_delta_tail(t, g, p)``,
    #: the arithmetic that gives f'(z)·g from t, which a fused kernel does in one more pass
    #: (NumPy would need three); both None where there is no such split
    np_delta_head = None
    py_delta_tail = None

    # -- the NumPy kernels; subclasses override --------------------------
    def np_activ(self, z, a, work=None):
        """a = f(z). Writes ``a``; keeps ``z``."""
        raise NotImplementedError  # abstract

    def np_prime(self, z, work=None):
        """z = f'(z). Overwrites ``z``."""
        raise NotImplementedError  # abstract

    def np_delta(self, z, a, work=None):
        """z = f'(z) * a. Overwrites ``z``; ``a`` is the incoming signal."""
        self.np_prime(z, work)
        np.multiply(z, a, out=z)
        return z

    # -- description -----------------------------------------------------
    def config(self) -> dict:
        return {"name": self.name, "param": self.param} if self.param else {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}({self.param})" if self.param else f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other) and self.param == other.param

    def __hash__(self):
        return hash((type(self), self.param))


def _expit(z, out):
    """out = σ(z) = 1 / (1 + e^-z) in four of NumPy's SIMD passes; ``out`` may be ``z``.

    Three times faster than scipy.special.expit on float32 and as exact, the tails
    included: for z below about -88 (float32) e^-z overflows to inf and 1/(1 + inf)
    is the exact limit 0, so that overflow is expected and not warned about.
    """
    with np.errstate(over="ignore"):
        np.negative(z, out=out)
        np.exp(out, out=out)
    np.add(out, 1.0, out=out)
    return np.reciprocal(out, out=out)


class Sigmoid(Activation):
    name = "sigmoid"
    c_activ = "(T)0.5 * tanh((T)0.5 * z) + (T)0.5"
    c_prime = "(T)0.25 * ((T)1 - tanh((T)0.5 * z) * tanh((T)0.5 * z))"


    @staticmethod
    def py_activ(z, p):
        return 0.5 * math.tanh(0.5 * z) + 0.5

    @staticmethod
    def py_prime(z, p):
        t = math.tanh(0.5 * z)
        return 0.25 * (1.0 - t * t)

    def np_activ(self, z, a, work=None):
        # 1/(1 + e^-z), not the seed's ½·tanh(z/2) + ½: that form rounds σ(-30) to 0 in
        # float32 (1 + tanh cancels), losing the relative precision of the left tail
        return _expit(z, a)

    def np_prime(self, z, work=None):
        # σ'(z) = σ(1-σ) = (1 - tanh²(z/2)) / 4: needs no second buffer.
        self.np_delta_head(z)
        np.square(z, out=z)
        np.subtract(1.0, z, out=z)
        np.multiply(z, 0.25, out=z)
        return z

    def np_delta_head(self, z):
        np.multiply(z, 0.5, out=z)
        return np.tanh(z, out=z)

    @staticmethod
    def py_delta_tail(t, g, p):
        return 0.25 * (g - t * t * g)       # σ'(z)·g with t = tanh(z/2)


class Tanh(Activation):
    name = "tanh"
    c_activ = "tanh(z)"
    c_prime = "(T)1 - tanh(z) * tanh(z)"


    @staticmethod
    def py_activ(z, p):
        return math.tanh(z)

    @staticmethod
    def py_prime(z, p):
        t = math.tanh(z)
        return 1.0 - t * t

    def np_activ(self, z, a, work=None):
        return np.tanh(z, out=a)

    def np_prime(self, z, work=None):
        np.tanh(z, out=z)
        np.square(z, out=z)
        np.subtract(1.0, z, out=z)
        return z

    def np_delta_head(self, z):
        return np.tanh(z, out=z)

    @staticmethod
    def py_delta_tail(t, g, p):
        return g - t * t * g        # (1 - t²)·g with no float literal: float32 stays float32


class ReLU(Activation):
    name = "relu"
    # the comparisons are written so that a NaN z falls through to z itself: every engine
    # propagates NaN as NumPy's maximum/heaviside do (``z > 0 ? z : 0`` would make it 0)
    c_activ = "z < (T)0 ? (T)0 : z"
    c_prime = "z > (T)0 ? (T)1 : (z <= (T)0 ? (T)0 : z)"


    @staticmethod
    def py_activ(z, p):
        return 0.0 if z < 0.0 else z

    @staticmethod
    def py_prime(z, p):
        return 1.0 if z > 0.0 else (0.0 if z <= 0.0 else z)

    def np_activ(self, z, a, work=None):
        return np.maximum(z, 0.0, out=a)

    def np_prime(self, z, work=None):
        # heaviside writes 0/1 as floats directly; np.greater would go through a bool temporary
        return np.heaviside(z, 0.0, out=z)


class LeakyReLU(Activation):
    name = "leaky_relu"
    c_activ = "z > (T)0 ? z : (T)p * z"
    c_prime = "z > (T)0 ? (T)1 : (z <= (T)0 ? (T)p : z)"     # NaN stays NaN, as with ReLU

    def __init__(self, slope: float = 0.01):
        if not (isinstance(slope, (int, float)) and 0.0 <= slope < 1.0):
            raise DensennError(f"leaky_relu slope must be a number in [0, 1), got {describe(slope)}")
        self.param = float(slope)


    @staticmethod
    def py_activ(z, p):
        return z if z > 0.0 else p * z

    @staticmethod
    def py_prime(z, p):
        return 1.0 if z > 0.0 else (p if z <= 0.0 else z)

    def np_activ(self, z, a, work=None):
        # max(z, p·z) is f(z) for 0 <= p < 1.
        np.multiply(z, self.param, out=a)
        return np.maximum(z, a, out=a)

    def np_prime(self, z, work=None):
        np.heaviside(z, 0.0, out=z)
        np.multiply(z, 1.0 - self.param, out=z)
        np.add(z, self.param, out=z)
        return z


class ELU(Activation):
    name = "elu"
    work_kind = "full"
    c_activ = "z > (T)0 ? z : (T)p * expm1(z)"
    c_prime = "z > (T)0 ? (T)1 : (T)p * exp(z)"

    def __init__(self, alpha: float = 1.0):
        if not (isinstance(alpha, (int, float)) and alpha > 0 and np.isfinite(alpha)):
            raise DensennError(f"elu alpha must be a positive number, got {describe(alpha)}")
        self.param = float(alpha)


    @staticmethod
    def py_activ(z, p):
        return z if z > 0.0 else p * math.expm1(z)

    @staticmethod
    def py_prime(z, p):
        return 1.0 if z > 0.0 else p * math.exp(z)

    def np_activ(self, z, a, work=None):
        work = np.empty_like(z) if work is None else work
        # f = max(z, 0) + p·expm1(min(z, 0)): exponentiate only the non-positive part.
        np.minimum(z, 0.0, out=work)
        np.expm1(work, out=work)
        np.multiply(work, self.param, out=work)
        np.maximum(z, 0.0, out=a)
        return np.add(a, work, out=a)

    def np_prime(self, z, work=None):
        work = np.empty_like(z) if work is None else work
        # f' = p·exp(min(z, 0)) + (1 - p)·[z > 0]
        np.minimum(z, 0.0, out=work)
        np.exp(work, out=work)
        np.multiply(work, self.param, out=work)
        np.heaviside(z, 0.0, out=z)
        np.multiply(z, 1.0 - self.param, out=z)
        return np.add(z, work, out=z)


class Softplus(Activation):
    name = "softplus"
    c_activ = "z > (T)0 ? z + log1p(exp(-z)) : log1p(exp(z))"
    c_prime = "(T)0.5 * tanh((T)0.5 * z) + (T)0.5"


    @staticmethod
    def py_activ(z, p):
        return z + math.log1p(math.exp(-z)) if z > 0.0 else math.log1p(math.exp(z))

    @staticmethod
    def py_prime(z, p):
        return 0.5 * math.tanh(0.5 * z) + 0.5

    def np_activ(self, z, a, work=None):
        return np.logaddexp(0.0, z, out=a)

    def np_prime(self, z, work=None):
        return _expit(z, z)     # softplus' = σ


class Linear(Activation):
    name = "linear"
    c_activ = "z"
    c_prime = "(T)1"


    @staticmethod
    def py_activ(z, p):
        return z

    @staticmethod
    def py_prime(z, p):
        return 1.0

    def np_activ(self, z, a, work=None):
        np.copyto(a, z)
        return a

    def np_prime(self, z, work=None):
        z.fill(1.0)
        return z

    def np_delta(self, z, a, work=None):
        np.copyto(z, a)
        return z


def _per_row(ufunc, x, v, out):
    """out[i, j] = ufunc(x[i, j], v[i]) for an (n, m) ``x`` and an (n,) ``v``; returns out.

    A 2-D ufunc call that broadcasts ``v`` makes NumPy copy it into an iteration
    buffer (up to 8192 elements, every call); 1-D calls along the shorter side of
    ``x`` need none, so the step stays allocation-free.
    """
    n, m = x.shape
    if m <= n:
        for j in range(m):
            ufunc(x[:, j], v, out=out[:, j])
    else:
        for i in range(n):
            ufunc(x[i], v[i], out=out[i])
    return out


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
        _per_row(np.subtract, z, work[:, 0], a)          # shifted by the row max: no overflow
        np.exp(a, out=a)
        np.sum(a, axis=1, keepdims=True, out=work)
        return _per_row(np.divide, a, work[:, 0], a)

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
        _per_row(np.subtract, a, work[:, 0], a)          # a is scratch once read
        return np.multiply(z, a, out=z)


ACTIVATIONS: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Sigmoid, Tanh, ReLU, LeakyReLU, ELU, Softplus, Linear, Softmax)
}


def get_activation(spec) -> Activation:
    """An Activation from a name (``"relu"``), a config dict, or an Activation."""
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, dict):
        name = check_choice("activation", spec.get("name"), ACTIVATIONS)
        return ACTIVATIONS[name](spec["param"]) if "param" in spec else ACTIVATIONS[name]()
    check_choice("activation", spec, ACTIVATIONS)
    return ACTIVATIONS[spec]()


@dataclass
class ActivationFn:
    """An activation bound to an engine and to the working memory it needs.

    This is the seed's ``SigmoidActivation``/``TanhActivation`` object: the
    training layer owns one and calls ``activ``, ``prime`` and ``delta`` on its
    own ``z`` and ``a``. ``work`` is allocated once, shaped for the layer's batch.
    """

    spec: Activation
    engine: object
    work: object = None

    @classmethod
    def for_layer(cls, spec: Activation, engine, batch: int, n_out: int, dtype) -> "ActivationFn":
        shape = {"full": (batch, n_out), "row": (batch, 1), None: None}[spec.work_kind]
        return cls(spec, engine, None if shape is None else engine.empty(shape, dtype))

    def rows(self, n: int) -> "ActivationFn":
        """The same activation working on the first ``n`` samples only."""
        return ActivationFn(self.spec, self.engine, None if self.work is None else self.work[:n])

    def activ(self, z, a):
        """a = f(z); keeps z. Returns a."""
        return self.engine.activ(self.spec, z, a, self.work)

    def prime(self, z):
        """z = f'(z); overwrites z. Returns z."""
        return self.engine.prime(self.spec, z, self.work)

    def delta(self, z, a, db=None):
        """z = f'(z) ∘ a; overwrites z (and may use a as scratch). With ``db``, also
        db = Σ rows of the new z (overwritten), in the same pass where the engine can. Returns z."""
        return self.engine.delta(self.spec, z, a, self.work, db)

    def nbytes(self) -> int:
        return 0 if self.work is None else self.engine.nbytes(self.work)

    def release(self):
        if self.work is not None:
            self.engine.release(self.work)
            self.work = None
