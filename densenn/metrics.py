"""Metrics on NumPy arrays: accuracy and the confusion matrix."""
from __future__ import annotations

import numpy as np

from densenn.errors import DensennError, check_positive_int


def _labels(name, y) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.size == 0:
        raise DensennError(f"{name} must be a non-empty 1-D array of class indices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not (arr == np.round(arr)).all():
            raise DensennError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise DensennError(f"{name} must hold non-negative class indices, got {arr.min()}")
    return arr.astype(np.int64)


def accuracy(y_true, y_pred) -> float:
    """Fraction of samples whose predicted class index equals the true one."""
    t, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    if t.shape != p.shape:
        raise DensennError(f"y_true and y_pred must have the same length, got {t.shape[0]} and {p.shape[0]}")
    return float(np.mean(t == p))


def confusion_matrix(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    """``counts[i, j]`` = number of samples of true class i predicted as class j."""
    t, p = _labels("y_true", y_true), _labels("y_pred", y_pred)
    if t.shape != p.shape:
        raise DensennError(f"y_true and y_pred must have the same length, got {t.shape[0]} and {p.shape[0]}")
    k = int(max(t.max(), p.max())) + 1 if n_classes is None else check_positive_int("n_classes", n_classes)
    if t.max() >= k or p.max() >= k:
        raise DensennError(f"class indices must be below n_classes={k}, got max {max(t.max(), p.max())}")
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    return counts


def format_confusion_matrix(counts: np.ndarray) -> str:
    """The matrix as aligned text, true classes down, predicted across."""
    k = counts.shape[0]
    width = max(4, len(str(counts.max())) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(k))]
    lines += [f"{i:>9}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(counts)]
    return "\n".join(lines)
