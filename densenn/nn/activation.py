"""Activation functions that know their derivative.

Each activation is declared once, here. Its arithmetic is two expressions in the
language of :mod:`densenn.kernels.expr`: ``f`` (the value, of ``z`` and the
parameter ``p``) and ``df`` (the derivative). From them come four declared
operations (:class:`densenn.kernels.ops.Map`) that every engine runs:

* ``activ``: a = f(z), keeps z;
* ``bias_activ``: z += b, then a = f(z) (the forward step after the GEMM);
* ``prime``: z = f'(z), overwrites z;
* ``delta``: z = f'(z) ∘ a, the backward pass's ``delta = prime(z) ∘ a`` (``a`` holds
  the signal from the layer above and may be overwritten as scratch).

The GPU engines compile the expressions to C, the CPU engine to a Numba loop, or runs
the NumPy kernels beside them (``np_activ``, ``np_prime``, ``np_delta``: they write only
into the arrays they are given, so a training step stays allocation-free). Which CPU
form is faster is declared too (``cpu``): NumPy's SIMD ``tanh``/``exp`` beat a scalar
loop calling libm, so sigmoid, tanh, softplus and ELU run NumPy's; the delta of tanh
and sigmoid is split: NumPy's ``tanh`` pass, then one loop for the arithmetic around it.
Softmax is row-wise: a C body per row and a Numba form over rows.

Formulas are chosen so |z| up to 1e4 gives no overflow warning and no NaN:
sigmoid goes through tanh (as in the seed), tanh's derivative is 1 - tanh²
rather than the seed's 1/cosh², softplus uses logaddexp, ELU exponentiates only
min(z, 0). The comparisons are written so that a NaN z falls through to z itself:
every engine propagates NaN as NumPy's maximum/heaviside do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from densenn.errors import DensennError, check_choice, describe
from densenn.kernels.numpy_eval import numpy_form
from densenn.kernels.ops import Map, RowMap


class Activation:
    """Base class: an activation function and its derivative.

    A subclass declares ``name``, ``f`` and ``df`` (expressions of ``z`` and ``p``, see
    the module docstring); its operations (``ops``) are made from them once, when the
    class is defined. ``param`` is the activation's one hyper-parameter where it has
    one (the slope of leaky ReLU, the alpha of ELU); ``work_kind`` says what working
    memory a training layer must give it: ``None`` (none), ``"full"`` (an array shaped
    like ``z``) or ``"row"`` (one value per sample, shape ``(batch, 1)``). The NumPy
    kernels ``np_activ``/``np_prime``/``np_delta`` are optional: without them the
    NumPy path evaluates ``f`` and ``df`` with temporaries (correct, not allocation-free).
    """

    name: str = ""
    param: float = 0.0
    work_kind: str | None = None
    #: True when f'(z) is elementwise; softmax's Jacobian is not.
    elementwise: bool = True
    f: str = ""
    df: str = ""
    #: the faster CPU form: "numba" (a loop of f) or "numpy" (the np_* kernels)
    cpu: str = "numba"
    #: for an f' built on a transcendental function (tanh, sigmoid), the CPU delta in two
    #: parts: ``np_delta_head(z)``, NumPy's SIMD pass(es) z → t in place, then the loop
    #: ``z = delta_tail`` (an expression of t, written z, and the signal a); None: no split
    np_delta_head: Any = None
    delta_tail: str | None = None
    ops: Any = None
    _kept: dict

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.f:
            cls.ops = _elementwise_ops(cls)

    # -- running on an engine ---------------------------------------------------
    def activ(self, engine, z, a, work=None):
        """a = f(z); keeps z. Returns a."""
        engine.map(self.ops.activ, (z, a), (self.param,), work=work)
        return a

    def bias_activ(self, engine, z, b, a, work=None):
        """z += b, then a = f(z) (b one value per column). Overwrites z and a; returns a."""
        engine.map(self.ops.bias_activ, (z, b, a), (self.param,), work=work)
        return a

    def prime(self, engine, z, work=None):
        """z = f'(z). Overwrites z; returns z."""
        engine.map(self.ops.prime, (z,), (self.param,), work=work)
        return z

    def delta(self, engine, z, a, work=None, db=None):
        """z = f'(z) ∘ a. Overwrites z; a may be used as scratch. With ``db``, also
        db = Σ rows of the new z (∇b; one pass where the engine can). Overwrites db."""
        engine.map(self.ops.delta, (z, a), (self.param,), work=work, sums=db)
        return z

    @classmethod
    def _with_param(cls, p) -> Activation:
        """An instance with parameter p, kept: the NumPy forms call its np_* kernels."""
        kept = cls.__dict__.get("_kept")
        if kept is None:
            kept = cls._kept = {}
        inst = kept.get(p)
        if inst is None:
            inst = kept[p] = cls(p) if cls.param or p else cls()  # type: ignore[call-arg]
        return inst

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


class ActivationOps(NamedTuple):
    """The declared operations of one activation (see Activation's methods)."""

    activ: Map | RowMap
    bias_activ: Map | RowMap
    prime: Map | RowMap
    delta: Map | RowMap


def _np_form(cls, method: str, bias: bool = False):
    """The NumPy form of one operation: the activation's np_* kernel where the class has
    one, else f/df evaluated with NumPy temporaries."""
    # the base np_delta is np_prime then a product: a class with its own np_prime has one
    own = "np_prime" if method == "np_delta" else method
    if getattr(cls, method) is getattr(Activation, method) and getattr(cls, own) is getattr(Activation, own):
        return None

    if bias:
        def run(engine, arrays, scalars, work):
            z, b, a = arrays
            engine.add_bias(z, b)
            getattr(cls._with_param(scalars[0]), method)(z, a, work)
    elif method == "np_prime":
        def run(engine, arrays, scalars, work):
            getattr(cls._with_param(scalars[0]), method)(arrays[0], work)
    else:
        def run(engine, arrays, scalars, work):
            getattr(cls._with_param(scalars[0]), method)(arrays[0], arrays[1], work)
    return run


def _elementwise_ops(cls) -> ActivationOps:
    n = cls.name or cls.__name__.lower()
    f, df = cls.f, cls.df or "0"
    prefer = cls.cpu
    pre = {} if cls.delta_tail is None else {"cpu_prepass": cls.np_delta_head, "cpu_body": f"z = {cls.delta_tail}"}
    return ActivationOps(
        Map(f"{n}_activ", "z a", writes="a", scalars="p", body=f"a = {f}", cpu=prefer,
            numpy=_np_form(cls, "np_activ") or numpy_form("z a", "p", f"a = {f}")),
        Map(f"{n}_bias_activ", "z b:col a", writes="z a", scalars="p", body=f"z = z + b\na = {f}", cpu=prefer,
            numpy=_np_form(cls, "np_activ", bias=True) or numpy_form("z b a", "p", f"z = z + b\na = {f}")),
        Map(f"{n}_prime", "z", writes="z", scalars="p", body=f"z = {df}", cpu=prefer,
            numpy=_np_form(cls, "np_prime") or numpy_form("z", "p", f"z = {df}")),
        Map(f"{n}_delta", "z a", writes="z", scalars="p", body=f"z = ({df}) * a",
            cpu="numba" if pre else prefer, **pre,
            numpy=_np_form(cls, "np_delta") or numpy_form("z a", "p", f"z = ({df}) * a")))


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
    f = "0.5 * tanh(0.5 * z) + 0.5"
    df = "0.25 * (1 - tanh(0.5 * z) * tanh(0.5 * z))"
    cpu = "numpy"
    #: σ'(z)·g with t = tanh(z/2), after np_delta_head
    delta_tail = "0.25 * (a - z * z * a)"




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

    @staticmethod
    def np_delta_head(z):
        np.multiply(z, 0.5, out=z)
        return np.tanh(z, out=z)



class Tanh(Activation):
    name = "tanh"
    f = "tanh(z)"
    df = "1 - tanh(z) * tanh(z)"
    cpu = "numpy"
    delta_tail = "a - z * z * a"    # (1 - t²)·g with t = tanh(z), after np_delta_head




    def np_activ(self, z, a, work=None):
        return np.tanh(z, out=a)

    def np_prime(self, z, work=None):
        np.tanh(z, out=z)
        np.square(z, out=z)
        np.subtract(1.0, z, out=z)
        return z

    @staticmethod
    def np_delta_head(z):
        return np.tanh(z, out=z)



class ReLU(Activation):
    name = "relu"
    # written so that a NaN z falls through to z itself (``z if z > 0 else 0`` would make it 0)
    f = "0 if z < 0 else z"
    df = "1 if z > 0 else (0 if z <= 0 else z)"




    def np_activ(self, z, a, work=None):
        return np.maximum(z, 0.0, out=a)

    def np_prime(self, z, work=None):
        # heaviside writes 0/1 as floats directly; np.greater would go through a bool temporary
        return np.heaviside(z, 0.0, out=z)


class LeakyReLU(Activation):
    name = "leaky_relu"
    f = "z if z > 0 else p * z"
    df = "1 if z > 0 else (p if z <= 0 else z)"     # NaN stays NaN, as with ReLU

    def __init__(self, slope: float = 0.01):
        if not (isinstance(slope, (int, float)) and 0.0 <= slope < 1.0):
            raise DensennError(f"leaky_relu slope must be a number in [0, 1), got {describe(slope)}")
        self.param = float(slope)




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
    f = "z if z > 0 else p * expm1(z)"
    df = "1 if z > 0 else p * exp(z)"
    cpu = "numpy"

    def __init__(self, alpha: float = 1.0):
        if not (isinstance(alpha, (int, float)) and alpha > 0 and np.isfinite(alpha)):
            raise DensennError(f"elu alpha must be a positive number, got {describe(alpha)}")
        self.param = float(alpha)




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
    f = "z + log1p(exp(-z)) if z > 0 else log1p(exp(z))"
    df = "0.5 * tanh(0.5 * z) + 0.5"
    cpu = "numpy"




    def np_activ(self, z, a, work=None):
        return np.logaddexp(0.0, z, out=a)

    def np_prime(self, z, work=None):
        return _expit(z, z)     # softplus' = σ


class Linear(Activation):
    name = "linear"
    f = "z"
    df = "1"

    def np_activ(self, z, a, work=None):
        np.copyto(a, z)
        return a

    def np_prime(self, z, work=None):
        z.fill(1.0)
        return z

    def np_delta(self, z, a, work=None):
        np.copyto(z, a)
        return z


ACTIVATIONS: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Sigmoid, Tanh, ReLU, LeakyReLU, ELU, Softplus, Linear)
}


def register_activation(cls: type[Activation]) -> type[Activation]:
    """Make a user-declared Activation subclass known by its ``name`` (to ``Dense``, saved
    model files and the CLI); returns the class, so it can decorate one."""
    if not (isinstance(cls, type) and issubclass(cls, Activation)) or not cls.name or cls.ops is None:
        raise DensennError(f"register_activation takes an Activation subclass with a name, f and df, got {cls!r}")
    ACTIVATIONS[cls.name] = cls
    return cls


def get_activation(spec) -> Activation:
    """An Activation from a name (``"relu"``), a config dict, or an Activation."""
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, dict):
        name = check_choice("activation", spec.get("name"), ACTIVATIONS)
        kind = ACTIVATIONS[name]
        return kind(spec["param"]) if "param" in spec else kind()  # type: ignore[call-arg]
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
    engine: Any
    work: Any = None

    @classmethod
    def for_layer(cls, spec: Activation, engine, batch: int, n_out: int, dtype) -> ActivationFn:
        shape = {"full": (batch, n_out), "row": (batch, 1), None: None}[spec.work_kind]
        return cls(spec, engine, None if shape is None else engine.empty(shape, dtype))

    def rows(self, n: int) -> ActivationFn:
        """The same activation working on the first ``n`` samples only."""
        return ActivationFn(self.spec, self.engine, None if self.work is None else self.work[:n])

    def activ(self, z, a):
        """a = f(z); keeps z. Returns a."""
        return self.spec.activ(self.engine, z, a, self.work)

    def prime(self, z):
        """z = f'(z); overwrites z. Returns z."""
        return self.spec.prime(self.engine, z, self.work)

    def bias_activ(self, z, b, a):
        """z += b, then a = f(z). Overwrites z and a; returns a."""
        return self.spec.bias_activ(self.engine, z, b, a, self.work)

    def delta(self, z, a, db=None):
        """z = f'(z) ∘ a; overwrites z (and may use a as scratch). With ``db``, also
        db = Σ rows of the new z (overwritten), in the same pass where the engine can. Returns z."""
        return self.spec.delta(self.engine, z, a, self.work, db)

    def nbytes(self) -> int:
        return 0 if self.work is None else self.engine.nbytes(self.work)

    def release(self):
        if self.work is not None:
            self.engine.release(self.work)
            self.work = None
