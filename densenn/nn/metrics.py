"""Metrics: accuracy and the confusion matrix on NumPy arrays, and the hit count on an engine."""
from __future__ import annotations

import numpy as np

from densenn.errors import DensennError, check_positive_int
from densenn.kernels.ops import Sum


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


def _count_correct_np(engine, arrays, scalars, work):
    """#rows whose predicted class equals labels; ``work`` is an index vector, one per row."""
    a, labels = arrays
    if a.shape[1] == 1:
        np.greater(a[:, 0], 0.5, out=work)
    else:
        np.argmax(a, axis=1, out=work)
    # predicted - true is 0 exactly where they agree (np.equal would make a bool temporary)
    np.subtract(work, labels, out=work)
    return work.size - np.count_nonzero(work)


def _count_correct_weighted_np(engine, arrays, scalars, work):
    """Σ w over the rows whose predicted class equals labels; ``work`` is (an index vector, a
    boolean vector), one element per row each."""
    a, labels, w = arrays
    index, hit = work
    _count_correct_np(engine, (a, labels), scalars, index)      # leaves predicted - true in index
    # a comparison into a float vector would cast through a buffer as long as the batch; into
    # booleans it casts nothing, and a masked sum reads them as they are
    np.equal(index, 0, out=hit)
    return float(np.add.reduce(w, where=hit))


#: the class a row predicts, in C: the first argmax (NaN counting as the maximum as in NumPy),
#: a > 0.5 for a single output
_PREDICTED = """
I pred = 0;
if (cols == 1) {
    pred = a[0] > (T)0.5 ? 1 : 0;
} else {
    T best = a[0];
    for (I j = 1; j < cols && !isnan(best); ++j)
        if (a[j] > best || isnan(a[j])) { best = a[j]; pred = j; }
}
"""

#: acc[0] += #rows whose prediction (see _PREDICTED) equals the label
COUNT_CORRECT = Sum("count_correct", "a labels:index", rows=True, numpy=_count_correct_np,
                    body=_PREDICTED + "term = (pred == (I)labels) ? (T)1 : (T)0;\n")

#: acc[0] += Σ w over the rows whose prediction equals the label (w: one weight per row)
COUNT_CORRECT_WEIGHTED = Sum("count_correct_weighted", "a labels:index w:row", rows=True,
                             numpy=_count_correct_weighted_np,
                             body=_PREDICTED + "term = (pred == (I)labels) ? w : (T)0;\n")


def count_correct(engine, a, labels, work, acc, w=None, hit=None):
    """acc[0] += #rows of ``a`` whose predicted class (argmax, or a > 0.5 for one output)
    equals ``labels`` (engine integers), or with the row weights ``w`` the Σ of their weights;
    ``work`` is scratch of one index per row, ``hit`` (with w) of one boolean per row."""
    if w is None:
        return engine.reduce(COUNT_CORRECT, (a, labels), (), acc, work=work)
    return engine.reduce(COUNT_CORRECT_WEIGHTED, (a, labels, w), (), acc, work=(work, hit))
