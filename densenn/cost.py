"""Costs: the value, and the gradient written into the last layer.

As in Nielsen's network2.py, each cost keeps its value and its gradient side by
side. The network's loss is the mean over samples of the per-sample cost C(a, y)
(summed over outputs). Gradients are written already scaled by ``1/n``.

When the last layer's activation is the cost's natural partner (softmax for
categorical cross-entropy, sigmoid for binary cross-entropy, linear for the
quadratic cost), ``delta = ∂C/∂z`` simplifies to ``(a - y)/n``; the network then
writes that straight into the last layer's ``z`` and skips the activation's
derivative, which is both faster and free of the 1/a blow-up near saturation.
"""
from __future__ import annotations

import numpy as np

from densenn.errors import DensennError, check_choice


class Cost:
    name: str = ""
    #: the output activation with which ∂C/∂z = a - y
    pairs_with: str | None = None
    #: C expressions of a, y (type T, clip constant eps) for the GPU engines:
    #: the per-element loss term and ∂C/∂a.
    c_loss: str = ""
    c_grad: str = ""

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

    def __repr__(self):
        return f"{type(self).__name__}()"


class Quadratic(Cost):
    """C = ½‖a - y‖² per sample (the mean squared error up to a factor)."""

    name = "quadratic"
    pairs_with = "linear"
    c_loss = "(T)0.5 * (a - y) * (a - y)"
    c_grad = "a - y"

    def np_value(self, a, y, work):
        np.subtract(a, y, out=work)
        return 0.5 * float(np.vdot(work, work))

    def np_gradient(self, a, y, out, scale, work):
        np.subtract(a, y, out=out)
        np.multiply(out, scale, out=out)


class CrossEntropy(Cost):
    """Categorical cross-entropy, C = -Σ_j y_j ln a_j, for one-hot (or soft) y."""

    name = "crossentropy"
    pairs_with = "softmax"
    target_range = (0.0, 1.0)
    c_loss = "-y * log(fmax(a, (T)eps))"
    c_grad = "-y / fmax(a, (T)eps)"

    def np_value(self, a, y, work):
        np.maximum(a, self.eps(a.dtype), out=work)
        np.log(work, out=work)
        return -float(np.vdot(y, work))

    def np_gradient(self, a, y, out, scale, work):
        np.maximum(a, self.eps(a.dtype), out=work)
        np.divide(y, work, out=out)
        np.multiply(out, -scale, out=out)


class BinaryCrossEntropy(Cost):
    """C = -Σ_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)], for independent 0/1 targets."""

    name = "binary_crossentropy"
    pairs_with = "sigmoid"
    target_range = (0.0, 1.0)
    c_loss = "-(y * log(fmax(a, (T)eps)) + ((T)1 - y) * log(fmax((T)1 - a, (T)eps)))"
    c_grad = "(a - y) / fmax(a * ((T)1 - a), (T)eps)"

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


class MeanAbsoluteError(Cost):
    """C = Σ_j |a_j - y_j| per sample."""

    name = "mae"
    c_loss = "fabs(a - y)"
    c_grad = "(a > y) ? (T)1 : ((a < y) ? (T)-1 : (T)0)"

    def np_value(self, a, y, work):
        np.subtract(a, y, out=work)
        np.abs(work, out=work)
        return float(work.sum())

    def np_gradient(self, a, y, out, scale, work):
        np.subtract(a, y, out=out)
        np.sign(out, out=out)
        np.multiply(out, scale, out=out)


COSTS: dict[str, type[Cost]] = {
    "quadratic": Quadratic,
    "mse": Quadratic,
    "crossentropy": CrossEntropy,
    "categorical_crossentropy": CrossEntropy,
    "binary_crossentropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
    "mae": MeanAbsoluteError,
}


def get_cost(spec) -> Cost:
    """A Cost from a name (``"crossentropy"``, ``"mse"``, ...) or a Cost."""
    if isinstance(spec, Cost):
        return spec
    check_choice("cost", spec, COSTS)
    return COSTS[spec]()
