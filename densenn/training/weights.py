"""Per-sample and per-class weights, checked and made into one weight per sample.

As in scikit-learn: ``sample_weight`` gives each sample its weight, ``class_weight`` each
class (``{class index: weight}``, classes left out weigh 1, or ``"balanced"``: n_samples /
(n_classes · count of the class), over the classes present), and both given multiply.
The loss is then the weighted mean Σ wᵢ lᵢ / Σ wᵢ over each batch, so a weight of 0 is
the sample left out and a weight of 2 the sample counted twice.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from densenn.errors import DensennError, describe, is_real_number_dtype


def resolve_weights(sample_weight, class_weight, labels, n: int, n_classes: int,
                    name_prefix: str = "") -> np.ndarray | None:
    """One float64 weight per sample (length ``n``), or None when both are None.

    ``labels`` are the samples' class indices (None for targets that are not classes:
    then ``class_weight`` is an error); ``n_classes`` the classes the network's outputs
    have (2 for a single output). ``name_prefix`` goes before the arguments' names in
    errors (``"validation "``). DensennError for a weight that is negative, NaN or
    infinite, of the wrong shape, a class that does not exist, or weights that are all 0.
    """
    sw_name, cw_name = f"{name_prefix}sample_weight", f"{name_prefix}class_weight"
    if sample_weight is None and class_weight is None:
        return None
    w = np.ones(n) if sample_weight is None else _sample_weights(sw_name, sample_weight, n)
    if class_weight is not None:
        if labels is None:
            raise DensennError(f"{cw_name} needs class labels in y (class indices, or one-hot rows), got targets "
                               "that are not classes")
        w = w * _class_weights(cw_name, class_weight, np.asarray(labels), n_classes)[labels]
    if n and not w.any():
        what = f"{sw_name} gives" if class_weight is None else \
            f"{cw_name} gives" if sample_weight is None else f"{sw_name} and {cw_name} give"
        raise DensennError(f"{what} every sample a weight of 0: no sample would count (expected at least one "
                           "positive weight)")
    return w


def _sample_weights(name: str, value, n: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception:
        raise DensennError(f"{name} must be a vector of {n} non-negative numbers, got {describe(value)}") from None
    if not is_real_number_dtype(arr.dtype) or arr.ndim != 1 or arr.shape[0] != n:
        raise DensennError(f"{name} must be a vector of {n} non-negative numbers (one per sample), got "
                           f"{describe(arr)}")
    w = arr.astype(np.float64)
    _check_values(name, w)
    return w


def _check_values(name: str, w: np.ndarray) -> None:
    bad = ~np.isfinite(w)
    if bad.any():
        k = int(bad.argmax())
        raise DensennError(f"{name} must hold finite non-negative numbers, got {w[k]} at index {k}")
    if w.size and w.min() < 0:
        k = int(w.argmin())
        raise DensennError(f"{name} must hold finite non-negative numbers, got {w[k]} at index {k}")


def _class_weights(name: str, class_weight, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The weight of each class index below n_classes."""
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise DensennError(f"{name} must be a dict {{class index: weight}} or 'balanced', got "
                               f"{class_weight!r}")
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        present = counts > 0
        out = np.ones(n_classes)
        out[present] = labels.shape[0] / (present.sum() * counts[present])
        return out
    if not isinstance(class_weight, dict):
        raise DensennError(f"{name} must be a dict {{class index: weight}} or 'balanced', got "
                           f"{describe(class_weight)}")
    unknown = [k for k in class_weight if not _is_class(k, n_classes)]
    if unknown:
        raise DensennError(f"{name} names classes that do not exist: {', '.join(repr(k) for k in unknown)} "
                           f"(the network has classes 0 to {n_classes - 1})")
    out = np.ones(n_classes)
    for k, v in class_weight.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) or v < 0:
            raise DensennError(f"{name}[{k!r}] must be a finite non-negative number, got {describe(v)}")
        out[int(k)] = float(v)
    return out


def _is_class(key, n_classes: int) -> bool:
    return not isinstance(key, bool) and isinstance(key, numbers.Integral) and 0 <= int(key) < n_classes
