"""Costs: the value, and the gradient written into the last layer.

As in Nielsen's network2.py, each cost keeps its value and its gradient side by
side. The network's loss is the mean over samples of the per-sample cost C(a, y)
(summed over outputs). Gradients are written already scaled by ``1/n``.

When the last layer's activation is the cost's natural partner (softmax for
categorical cross-entropy, sigmoid for binary cross-entropy, linear for the
quadratic cost), ``delta = ∂C/∂z`` simplifies to ``(a - y)/n``; the network then
writes that straight into the last layer's ``z`` and skips the activation's
derivative, which is both faster and free of the 1/a blow-up near saturation.

With per-sample weights w (``w`` arguments: one value per row), the value is Σ_i w_i C_i
and the gradient scale · w_i · ∂C_i/∂a, each from the same ``loss``/``grad`` expressions
(declared with ``w`` as a ``row`` array); the network passes scale = 1/Σw.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from densenn.errors import DensennError, check_choice
from densenn.kernels.numpy_eval import numpy_form, per_row
from densenn.kernels.ops import Map, RowMap, Sum
from densenn.nn.softmax import softmax_row


class Cost:
    name: str = ""
    #: the output activation with which ∂C/∂z = a - y
    pairs_with: str | None = None
    #: expressions of a, y and the clip constant eps (see densenn.kernels.expr): the
    #: per-element loss term and ∂C/∂a, from which the declared operations are made
    loss: str = ""
    grad: str = ""
    ops: Any = None
    _instance: Cost
    #: an optional operation for the output layer and this cost in one pass (see
    #: SOFTMAX_CROSSENTROPY); the network uses it where the engine can run it
    fused_head: Any = None
    #: the same with per-sample weights (SOFTMAX_CROSSENTROPY_WEIGHTED)
    fused_head_weighted: Any = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.loss:
            cls.ops = _cost_ops(cls)

    @classmethod
    def _kept(cls) -> Cost:
        """One instance, kept: the NumPy forms call its np_* kernels."""
        if "_instance" not in cls.__dict__:
            cls._instance = cls()
        return cls._instance

    # -- running on an engine ---------------------------------------------------
    def value(self, engine, a, y, work, acc, w=None):
        """acc[0] += Σ over rows of C(a, y), or with the row weights ``w`` Σ_i w_i C(a_i, y_i).
        ``work`` (shaped like a) is scratch."""
        if w is None:
            return engine.reduce(self.ops.value, (a, y), (self.eps(a.dtype),), acc, work=work)
        return engine.reduce(self.ops.weighted_value, (a, y, w), (self.eps(a.dtype),), acc, work=work)

    def gradient(self, engine, a, y, out, scale, work, w=None):
        """out = scale · ∂C/∂a, or with the row weights ``w`` scale · w_i · ∂C_i/∂a. ``out``
        may be ``a``; ``work`` is scratch."""
        if w is None:
            engine.map(self.ops.gradient, (a, y, out), (scale, self.eps(a.dtype)), work=work)
        else:
            engine.map(self.ops.weighted_gradient, (a, y, w, out), (scale, self.eps(a.dtype)), work=work)
        return out

    @staticmethod
    def eps(dtype) -> float:
        """Clip constant that keeps log and 1/a finite."""
        return float(np.finfo(dtype).eps)

    #: the range targets must lie in for this cost (None: any real)
    target_range: tuple[float, float] | None = None

    def check_targets(self, targets, name: str = "y") -> None:
        """DensennError if ``targets`` (the float target matrix) lie outside ``target_range``."""
        if self.target_range is None or targets.size == 0:
            return
        low, high = self.target_range
        if targets.min() < low or targets.max() > high:
            raise DensennError(f"{name} must hold targets in [{low:g}, {high:g}] for the {self.name} cost "
                               f"(class labels or probabilities), got values in "
                               f"[{targets.min():g}, {targets.max():g}]")

    def np_value(self, a, y, work) -> float:
        """Σ over the batch of the per-sample cost. Overwrites ``work`` (shaped like a)."""
        raise NotImplementedError  # abstract

    def np_gradient(self, a, y, out, scale, work) -> None:
        """out = scale · ∂C/∂a. ``out`` may be ``a`` itself; ``work`` is scratch."""
        raise NotImplementedError  # abstract

    def np_weighted_value(self, a, y, w, work) -> float:
        """Σ_i w_i C(a_i, y_i) over the batch (``w`` one weight per row). Overwrites ``work``."""
        raise NotImplementedError  # abstract

    def __repr__(self):
        return f"{type(self).__name__}()"


class CostOps(NamedTuple):
    """The declared operations of one cost, unweighted and with per-sample weights ``w``."""

    value: Sum
    gradient: Map
    weighted_value: Sum
    weighted_gradient: Map


def _cost_ops(cls) -> CostOps:
    n = cls.name or cls.__name__.lower()

    def value(engine, arrays, scalars, work):
        return cls._kept().np_value(arrays[0], arrays[1], work)

    def gradient(engine, arrays, scalars, work):
        cls._kept().np_gradient(arrays[0], arrays[1], arrays[2], scalars[0], work)

    def weighted_value(engine, arrays, scalars, work):
        return cls._kept().np_weighted_value(arrays[0], arrays[1], arrays[2], work)

    def weighted_gradient(engine, arrays, scalars, work):
        a, y, w, out = arrays
        cls._kept().np_gradient(a, y, out, scalars[0], work)
        per_row(np.multiply, out, w, out)

    own = cls.np_value is not Cost.np_value
    own_weighted = cls.np_weighted_value is not Cost.np_weighted_value
    weighted_grad = f"out = scale * w * ({cls.grad})"
    return CostOps(
        Sum(f"{n}_value", "a y", scalars="eps", body=f"term = {cls.loss}",
            numpy=value if own else _sum_form(f"term = {cls.loss}")),
        Map(f"{n}_gradient", "a y out", writes="out", scalars="scale eps", body=f"out = scale * ({cls.grad})",
            cpu="numpy" if own else "numba",
            numpy=gradient if own else numpy_form("a y out", "scale eps", f"out = scale * ({cls.grad})")),
        Sum(f"{n}_value_weighted", "a y w:row", scalars="eps", body=f"term = w * ({cls.loss})",
            numpy=weighted_value if own_weighted else _sum_form(f"term = w * ({cls.loss})", weighted=True)),
        Map(f"{n}_gradient_weighted", "a y w:row out", writes="out", scalars="scale eps", body=weighted_grad,
            cpu="numpy" if own else "numba",
            numpy=weighted_gradient if own else numpy_form("a y w:row out", "scale eps", weighted_grad)))


def _sum_form(body: str, weighted: bool = False):
    """A Sum's NumPy form for a user-declared cost: the terms evaluated with temporaries
    (``weighted``: the arrays are a, y and the row weights w)."""
    terms = numpy_form("a y w:row term" if weighted else "a y term", "eps", body)

    def run(engine, arrays, scalars, work):
        terms(engine, tuple(arrays) + (work,), scalars, None)
        return float(work.sum())
    return run


#: out = scale · (a - y): the delta of a cost paired with its output activation
DIFF = Map("diff", "a y out", writes="out", scalars="scale", body="out = scale * (a - y)", cpu="numpy",
           numpy=lambda engine, arrays, scalars, work: np.multiply(np.subtract(arrays[0], arrays[1], out=arrays[2]),
                                                                   scalars[0], out=arrays[2]))


def _diff_weighted_np(engine, arrays, scalars, work):
    a, y, w, out = arrays
    np.subtract(a, y, out=out)
    per_row(np.multiply, out, w, out)
    np.multiply(out, scalars[0], out=out)


#: out = scale · w · (a - y): DIFF with one weight per row
DIFF_WEIGHTED = Map("diff_weighted", "a y w:row out", writes="out", scalars="scale", body="out = scale * w * (a - y)",
                    numpy=_diff_weighted_np)


def diff(engine, a, y, out, scale, w=None):
    """out = scale · (a - y), or with the row weights ``w`` scale · w_i · (a_i - y_i).
    Overwrites out; returns it."""
    if w is None:
        engine.map(DIFF, (a, y, out), (scale,))
    else:
        engine.map(DIFF_WEIGHTED, (a, y, w, out), (scale,))
    return out


class Quadratic(Cost):
    """C = ½‖a - y‖² per sample (the mean squared error up to a factor)."""

    name = "quadratic"
    pairs_with = "linear"
    loss = "0.5 * (a - y) * (a - y)"
    grad = "a - y"

    def np_value(self, a, y, work):
        np.subtract(a, y, out=work)
        return 0.5 * float(np.vdot(work, work))

    def np_gradient(self, a, y, out, scale, work):
        np.subtract(a, y, out=out)
        np.multiply(out, scale, out=out)

    def np_weighted_value(self, a, y, w, work):
        np.subtract(a, y, out=work)
        np.multiply(work, work, out=work)
        per_row(np.multiply, work, w, work)
        return 0.5 * float(work.sum())


class CrossEntropy(Cost):
    """Categorical cross-entropy, C = -Σ_j y_j ln a_j, for one-hot (or soft) y."""

    name = "crossentropy"
    pairs_with = "softmax"
    target_range = (0.0, 1.0)
    loss = "-y * log(max(a, eps))"
    grad = "-y / max(a, eps)"

    def np_value(self, a, y, work):
        np.maximum(a, self.eps(a.dtype), out=work)
        np.log(work, out=work)
        return -float(np.vdot(y, work))

    def np_gradient(self, a, y, out, scale, work):
        np.maximum(a, self.eps(a.dtype), out=work)
        np.divide(y, work, out=out)
        np.multiply(out, -scale, out=out)

    def np_weighted_value(self, a, y, w, work):
        np.maximum(a, self.eps(a.dtype), out=work)
        np.log(work, out=work)
        per_row(np.multiply, work, w, work)
        return -float(np.vdot(y, work))


def _softmax_crossentropy(njit):
    row = softmax_row(njit)

    def kernel(z, b, a, labels, acc, scale, eps, db):
        # The output layer of a classifier in one pass per row: bias, softmax, the loss
        # and the hit of its label, and delta = scale·(a - onehot) with its column sums.
        n, m = z.shape
        for j in range(m):
            db[j] = 0.0
        loss = 0.0
        hits = 0
        for i in range(n):
            row(z, b, a, i, True)
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
    return kernel


#: the softmax output layer with cross-entropy against class ``labels``, in one pass (CPU,
#: with Numba): z += b; a = softmax(z); acc[0] += Σ -ln max(a[label], eps); acc[1] += hits;
#: z = scale·(a - onehot(labels)) (delta); sums = Σ_rows delta. Where an engine cannot run
#: it (``engine.can``), the network runs the same steps one by one.
SOFTMAX_CROSSENTROPY = RowMap("softmax_crossentropy", "z b:col a labels:index acc:whole", writes="z a acc",
                              scalars="scale eps", numba=_softmax_crossentropy)


def _softmax_crossentropy_weighted(njit):
    row = softmax_row(njit)

    def kernel(z, b, a, labels, w, acc, scale, eps, db):
        # as _softmax_crossentropy, each row's loss, hit and delta times its weight
        n, m = z.shape
        for j in range(m):
            db[j] = 0.0
        loss = 0.0
        hits = 0.0
        for i in range(n):
            row(z, b, a, i, True)
            best = 0
            for j in range(1, m):
                if a[i, j] > a[i, best]:
                    best = j
            label = labels[i]
            wi = w[i]
            loss -= wi * math.log(max(a[i, label], eps))
            if best == label:
                hits += wi
            s = scale * wi
            for j in range(m):
                d = (a[i, j] - (1.0 if j == label else 0.0)) * s
                z[i, j] = d
                db[j] += d
        acc[0] += loss
        acc[1] += hits
    return kernel


#: SOFTMAX_CROSSENTROPY with one weight per row: acc[0] += Σ w·(-ln max(a[label], eps));
#: acc[1] += Σ w·hit; z = scale·w·(a - onehot(labels)); sums = Σ_rows delta
SOFTMAX_CROSSENTROPY_WEIGHTED = RowMap("softmax_crossentropy_weighted", "z b:col a labels:index w:row acc:whole",
                                       writes="z a acc", scalars="scale eps", numba=_softmax_crossentropy_weighted)


CrossEntropy.fused_head = SOFTMAX_CROSSENTROPY
CrossEntropy.fused_head_weighted = SOFTMAX_CROSSENTROPY_WEIGHTED


class BinaryCrossEntropy(Cost):
    """C = -Σ_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)], for independent 0/1 targets."""

    name = "binary_crossentropy"
    pairs_with = "sigmoid"
    target_range = (0.0, 1.0)
    loss = "-(y * log(max(a, eps)) + (1 - y) * log(max(1 - a, eps)))"
    grad = "(a - y) / max(a * (1 - a), eps)"

    def np_value(self, a, y, work):
        eps = self.eps(a.dtype)
        np.maximum(a, eps, out=work)
        np.log(work, out=work)
        total = float(np.vdot(y, work))
        np.subtract(1.0, a, out=work)
        np.maximum(work, eps, out=work)
        np.log(work, out=work)
        # Σ (1 - y)·log(1 - a) = Σ log(1 - a) - Σ y·log(1 - a)
        total += float(work.sum()) - float(np.vdot(y, work))
        return -total

    def np_gradient(self, a, y, out, scale, work):
        np.subtract(1.0, a, out=work)
        np.multiply(work, a, out=work)
        np.maximum(work, self.eps(a.dtype), out=work)
        np.subtract(a, y, out=out)
        np.divide(out, work, out=out)
        np.multiply(out, scale, out=out)

    def np_weighted_value(self, a, y, w, work):
        # as np_value, with each log row-scaled by its weight before the sums
        eps = self.eps(a.dtype)
        np.maximum(a, eps, out=work)
        np.log(work, out=work)
        per_row(np.multiply, work, w, work)
        total = float(np.vdot(y, work))
        np.subtract(1.0, a, out=work)
        np.maximum(work, eps, out=work)
        np.log(work, out=work)
        per_row(np.multiply, work, w, work)
        total += float(work.sum()) - float(np.vdot(y, work))
        return -total


class MeanAbsoluteError(Cost):
    """C = Σ_j |a_j - y_j| per sample."""

    name = "mae"
    loss = "abs(a - y)"
    grad = "1 if a > y else (-1 if a < y else 0)"

    def np_value(self, a, y, work):
        np.subtract(a, y, out=work)
        np.abs(work, out=work)
        return float(work.sum())

    def np_gradient(self, a, y, out, scale, work):
        np.subtract(a, y, out=out)
        np.sign(out, out=out)
        np.multiply(out, scale, out=out)

    def np_weighted_value(self, a, y, w, work):
        np.subtract(a, y, out=work)
        np.abs(work, out=work)
        per_row(np.multiply, work, w, work)
        return float(work.sum())


COSTS: dict[str, type[Cost]] = {
    "quadratic": Quadratic,
    "mse": Quadratic,
    "crossentropy": CrossEntropy,
    "categorical_crossentropy": CrossEntropy,
    "binary_crossentropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
    "mae": MeanAbsoluteError,
}


def register_cost(cls: type[Cost]) -> type[Cost]:
    """Make a user-declared Cost subclass (``name``, ``loss``, ``grad``) known by its name."""
    if not (isinstance(cls, type) and issubclass(cls, Cost)) or not cls.name or cls.ops is None:
        raise DensennError(f"register_cost takes a Cost subclass with a name, loss and grad, got {cls!r}")
    COSTS[cls.name] = cls
    return cls


def get_cost(spec) -> Cost:
    """A Cost from a name (``"crossentropy"``, ``"mse"``, ...) or a Cost."""
    if isinstance(spec, Cost):
        return spec
    check_choice("cost", spec, COSTS)
    return COSTS[spec]()
