"""The one exception type users catch, and the checks that raise it.

Every public entry point validates its arguments with these helpers so that a
mistake is reported once, at the door, with the argument's name, what was
expected and what came.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


class DensennException(Exception):
    """The base of everything densenn raises on purpose: ``except DensennException`` catches
    bad input, a missing engine and a diverged training alike."""


class DensennError(DensennException, ValueError):
    """Raised for bad input to any public densenn function.

    Subclasses ValueError so code written against NumPy/scikit-learn conventions
    still catches it.
    """


class EngineUnavailable(DensennException, RuntimeError):
    """An engine was asked for but cannot run here (missing package or device). Not bad
    input: the same call works on a machine that has the engine."""


class TrainingDiverged(DensennException, ArithmeticError):
    """The loss or the weights became NaN or infinite; the network keeps its last good weights."""


def describe(value) -> str:
    """A short description of ``value`` for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise DensennError(f"{name} must be a positive integer, got {describe(value)}")
    return int(value)


def check_nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise DensennError(f"{name} must be a non-negative integer, got {describe(value)}")
    return int(value)


def check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise DensennError(f"{name} must be a positive finite number, got {describe(value)}")
    return float(value)


def check_float_range(name: str, value, low: float, high: float, *, low_open=False, high_open=False) -> float:
    """Check ``low <= value <= high`` (with optionally open ends)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise DensennError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {describe(value)}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise DensennError(f"unknown {name} {describe(value)}; expected one of: {', '.join(sorted(choices))}")
    return value


def is_real_number_dtype(dtype) -> bool:
    """Bool, integer or real float: what a feature or a target may be. (timedelta64 counts as
    an integer to NumPy, datetime64 as neither; complex is not real.)"""
    return dtype.kind in "biuf"


def check_matrix(name: str, value, *, n_features: int | None = None, allow_empty=False,
                 dtype=None) -> np.ndarray:
    """Return ``value`` as a 2-D finite numeric NumPy array (no copy when it already is one).

    With ``dtype`` the result is a C-contiguous array of that dtype, and it is the cast
    values that must be finite: a float64 1e39 is inf in float32, and is refused.
    Raises DensennError for non-numeric, empty, non-2-D, NaN/inf input, or a
    feature count other than ``n_features``.
    """
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise DensennError(f"{name} must be a numeric 2-D array, got {describe(value)} ({exc})") from None
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DensennError(f"{name} must be real, got dtype {arr.dtype}")
    if not is_real_number_dtype(arr.dtype):
        raise DensennError(f"{name} must be numeric (bool, integer or float), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DensennError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise DensennError(f"{name} must not be empty, got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise DensennError(f"{name} must have {n_features} features (columns), got {arr.shape[1]}")
    if dtype is not None:
        with np.errstate(over="ignore"):    # an overflow is reported below, as inf
            arr = np.ascontiguousarray(arr, dtype=dtype)
    if np.issubdtype(arr.dtype, np.floating) and not _all_finite(arr):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        limit = f" or beyond the range of {np.dtype(dtype).name} (|x| > {np.finfo(dtype).max:.3g})" \
            if dtype is not None else ""
        raise DensennError(f"{name} contains {bad} NaN or infinite value(s){limit}")
    return arr


def _all_finite(arr) -> bool:
    """No NaN or ±inf in ``arr``, in one pass with no boolean temporary (fit checks all of x
    on every call): column sums are finite unless an entry is NaN/inf or a sum overflows,
    and only then are the entries themselves looked at."""
    if arr.ndim != 2 or arr.size == 0:
        return bool(np.isfinite(arr).all())
    with np.errstate(over="ignore", invalid="ignore"):
        sums = np.add.reduce(arr, axis=0)
    return bool(np.isfinite(sums).all()) or bool(np.isfinite(arr).all())
