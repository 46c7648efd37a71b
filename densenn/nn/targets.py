"""Targets and labels: what ``fit``, ``evaluate`` and ``gradients`` accept as y, made uniform."""
from __future__ import annotations

import numpy as np

from densenn.errors import DensennError, describe, is_real_number_dtype

#: host dtype of class labels (NumPy's index type)
LABEL_DTYPE = np.int64


def index_dtype(engine) -> np.dtype:
    """The integer dtype of labels and batch indices on ``engine`` (its ``index_dtype``, else int32).

    The CPU engine uses NumPy's intp, so ``take``/``argmax`` need no converted copy.
    """
    return np.dtype(getattr(engine, "index_dtype", np.int32))


def prepare_targets(y, n_samples: int, n_out: int, name: str = "y"):
    """Targets as a float ``(n, n_out)`` matrix, plus int class labels when y is a classification.

    Accepted: class indices ``(n,)`` (integers, or whole floats) in ``[0, n_out)``
    (for one output: 0/1); one-hot rows ``(n, n_out)``; or real targets
    ``(n, n_out)`` (regression; then labels is None). Returns ``(targets, labels)``.
    """
    try:
        arr = np.asarray(y)
    except Exception:
        raise DensennError(f"{name} must be a numeric array, got {describe(y)}") from None
    if not is_real_number_dtype(arr.dtype):
        raise DensennError(f"{name} must be numeric (class indices or targets), got dtype {arr.dtype}")
    if arr.shape[:1] != (n_samples,):
        raise DensennError(f"{name} must have {n_samples} rows (one per sample of x), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DensennError(f"{name} contains NaN or infinite values")
    if arr.ndim == 2 and arr.shape[1] == 1 and n_out == 1:
        arr = arr[:, 0]
    if arr.ndim == 1:
        if n_out > 1:
            if not np.issubdtype(arr.dtype, np.integer) and not (arr == np.round(arr)).all():
                raise DensennError(f"{name} as a 1-D array must hold class indices (integers), "
                                   f"got non-integer values such as {arr[arr != np.round(arr)][0]!r}")
            if arr.min() < 0 or arr.max() >= n_out:
                raise DensennError(f"{name} class indices must be in [0, {n_out - 1}] for {n_out} outputs, "
                                   f"got values in [{arr.min()}, {arr.max()}]")
            labels = arr.astype(LABEL_DTYPE)
            targets = np.zeros((n_samples, n_out))
            targets[np.arange(n_samples), labels] = 1.0
            return targets, labels
        targets = arr.astype(np.float64).reshape(-1, 1)
        binary = np.isin(arr, (0, 1)).all()
        return targets, (arr.astype(LABEL_DTYPE) if binary else None)
    if arr.ndim != 2 or arr.shape[1] != n_out:
        raise DensennError(f"{name} must be class indices of shape ({n_samples},) or targets of shape "
                           f"({n_samples}, {n_out}), got shape {arr.shape}")
    targets = arr.astype(np.float64)
    one_hot = np.isin(targets, (0.0, 1.0)).all() and (targets.sum(axis=1) == 1).all()
    return targets, (targets.argmax(axis=1).astype(LABEL_DTYPE) if one_hot else None)
