"""The data helpers: a Dataset, a stratified split, a Standardizer, one-hot labels,
batches, and scikit-learn's digits."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from densenn.errors import DensennError, check_float_range, check_matrix, check_positive_int, describe


# -- small checks -------------------------------------------------------------------------
def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise DensennError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def _check_seed(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        extra = " or None" if allow_none else ""
        raise DensennError(f"{name} must be a non-negative integer{extra}, got {describe(value)}")
    return int(value)


def _check_labels(name: str, y, n: int) -> np.ndarray:
    """``y`` as a numeric, finite array of 1 or 2 dimensions with ``n`` rows."""
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise DensennError(f"{name} must be numeric, got dtype {y.dtype}")
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise DensennError(f"{name} must have {n} rows (one per sample of x), got shape {y.shape}")
    if np.issubdtype(y.dtype, np.inexact) and not np.isfinite(y).all():
        raise DensennError(f"{name} contains {int(y.size - np.isfinite(y).sum())} NaN or infinite value(s)")
    return y


# -- the result type ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split.

    ``x_*``: float32 ``(n, n_features)`` (or ``(n, 28, 28)`` for unflattened
    MNIST); ``y_*``: int64 class indices in ``[0, n_classes)``.
    ``feature_names``: one name per feature, when the source has them.
    ``standardizer``: the :class:`Standardizer` already applied to ``x_*``
    (fitted on the train part), or None when the features are only scaled.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    feature_names: tuple | None = None
    standardizer: Standardizer | None = None

    def __post_init__(self):
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if not isinstance(x, np.ndarray) or x.ndim < 2:
                raise DensennError(f"x_{part} must be an array of at least 2 dimensions, got {describe(x)}")
            if not isinstance(y, np.ndarray) or y.shape != (x.shape[0],):
                raise DensennError(f"y_{part} must be a 1-D array of {x.shape[0]} labels, got {describe(y)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DensennError(f"x_test must have the feature shape of x_train {self.x_train.shape[1:]}, "
                               f"got {self.x_test.shape[1:]}")
        check_positive_int("n_classes", self.n_classes)

    @property
    def n_features(self) -> int:
        """Number of features per sample (the product of the feature dimensions)."""
        return int(np.prod(self.x_train.shape[1:]))

    def __repr__(self):
        return (f"Dataset({self.name!r}: train {self.x_train.shape}, test {self.x_test.shape}, "
                f"{self.n_classes} classes)")


# -- helpers ------------------------------------------------------------------------------
def train_test_split(x, y, test_size: float = 0.2, seed: int | None = 0, stratify: bool = True):
    """Split into ``(x_train, x_test, y_train, y_test)`` (scikit-learn's order).

    The test part holds ``round(test_size * n)`` samples. With ``stratify`` and
    1-D integer labels, each class keeps its share in both parts (per-class
    counts rounded so that the total is exact); other targets are split at
    random. Both parts come shuffled; the same ``seed`` gives the same split.
    """
    x = check_matrix("x", x)
    y = _check_labels("y", y, x.shape[0])
    test_size = check_float_range("test_size", test_size, 0.0, 1.0, low_open=True, high_open=True)
    seed = _check_seed("seed", seed, allow_none=True)
    stratify = _check_bool("stratify", stratify)
    n = x.shape[0]
    n_test = int(round(test_size * n))
    if n_test == 0 or n_test == n:
        raise DensennError(f"test_size={test_size} leaves an empty train or test part for {n} samples; "
                           "give a test_size nearer 0.5 or more samples")
    rng = np.random.default_rng(seed)
    if stratify and y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        share = counts * (n_test / n)
        per_class = np.floor(share).astype(int)
        # hand out the remaining test slots to the classes with the largest remainders
        order = np.argsort(-(share - per_class), kind="stable")
        per_class[order[: n_test - per_class.sum()]] += 1
        test_idx = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[:k]
                                   for c, k in enumerate(per_class)])
    else:
        test_idx = rng.permutation(n)[:n_test]
    train_mask = np.ones(n, dtype=bool)
    train_mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(train_mask))
    test_idx = rng.permutation(test_idx)
    return x[train_idx], x[test_idx], y[train_idx], y[test_idx]


class Standardizer:
    """Per-feature ``(x - mean) / std``, the statistics taken from the training data.

    A feature with standard deviation 0 (constant) gets std 1, so it maps to 0
    rather than NaN. ``to_dict()``/``from_dict()`` round-trip the statistics as
    plain lists (for saving next to a model).
    """

    def __init__(self, mean=None, std=None):
        if (mean is None) != (std is None):
            raise DensennError("Standardizer needs both mean and std, or neither")
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        if mean is not None:
            self.mean = self._vector("mean", mean)
            self.std = self._vector("std", std, length=self.mean.shape[0])
            if (self.std <= 0).any():
                raise DensennError(f"std must be positive, got {int((self.std <= 0).sum())} value(s) <= 0")

    @staticmethod
    def _vector(name, value, length=None) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DensennError(f"{name} must be a 1-D list of numbers, got {describe(value)} ({exc})") from None
        if arr.ndim != 1 or arr.size == 0 or (length is not None and arr.size != length):
            want = f"{length} numbers" if length is not None else "a non-empty 1-D list of numbers"
            raise DensennError(f"{name} must be {want}, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise DensennError(f"{name} contains NaN or infinite value(s)")
        return arr

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, x) -> Standardizer:
        """Take mean and std per feature (column) of ``x``."""
        x = check_matrix("x", x)
        self.mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        # a constant column can come out with a rounding-sized std instead of exactly 0
        constant = std <= 1e-12 * np.abs(self.mean)
        self.mean = np.where(constant, x[0], self.mean)      # so that it maps to exactly 0
        self.std = np.where(constant, 1.0, std)
        return self

    def _stats(self, why: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std); DensennError ending in ``why`` when not fitted."""
        if self.mean is None or self.std is None:
            raise DensennError(f"Standardizer is not fitted: {why}")
        return self.mean, self.std

    def _check(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x checked, mean, std)."""
        mean, std = self._stats("call fit(x_train) first")
        return check_matrix("x", x, n_features=mean.shape[0]), mean, std

    def transform(self, x, dtype=np.float32) -> np.ndarray:
        """``(x - mean) / std`` as ``dtype``."""
        x, mean, std = self._check(x)
        return ((x - mean) / std).astype(dtype)

    def fit_transform(self, x, dtype=np.float32) -> np.ndarray:
        return self.fit(x).transform(x, dtype)

    def inverse_transform(self, x, dtype=np.float32) -> np.ndarray:
        """``x * std + mean``: back to the original scale."""
        x, mean, std = self._check(x)
        return (x * std + mean).astype(dtype)

    def to_dict(self) -> dict:
        mean, std = self._stats("nothing to save")
        return {"mean": mean.tolist(), "std": std.tolist()}

    @classmethod
    def from_dict(cls, d) -> Standardizer:
        if not isinstance(d, dict) or "mean" not in d or "std" not in d:
            raise DensennError(f"standardizer dict must have keys 'mean' and 'std', got {describe(d)}")
        return cls(d["mean"], d["std"])

    def __repr__(self):
        return f"Standardizer({self.mean.shape[0]} features)" if self.mean is not None else "Standardizer(not fitted)"


def one_hot(y, n_classes: int | None = None, dtype=np.float32) -> np.ndarray:
    """``(n, n_classes)`` rows with a 1 at each label's column.

    Labels must be non-negative integers below ``n_classes`` (default: the
    largest label + 1). Floats that are whole numbers are accepted; other
    floats, NaN and booleans are not.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise DensennError(f"y must be a non-empty 1-D array of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating):
            raise DensennError(f"y must hold integer class indices, got dtype {y.dtype}")
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise DensennError(f"y must hold integer class indices, got {int(bad.sum())} non-whole value(s), "
                               f"e.g. {float(y[bad][0])!r} at position {int(np.flatnonzero(bad)[0])}")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise DensennError(f"y class indices must be non-negative, got {labels.min()}")
    k = int(labels.max()) + 1 if n_classes is None else check_positive_int("n_classes", n_classes)
    if labels.max() >= k:
        raise DensennError(f"y class indices must be below n_classes={k}, got {labels.max()}")
    try:
        out = np.zeros((labels.size, k), dtype=dtype)
    except TypeError as exc:
        raise DensennError(f"dtype must be a NumPy dtype, got {describe(dtype)} ({exc})") from None
    out[np.arange(labels.size), labels] = 1
    return out


def batches(n: int, batch_size: int, seed: int | None = None):
    """Yield int index arrays covering ``range(n)`` in chunks of ``batch_size``.

    In order when ``seed`` is None, shuffled (reproducibly) otherwise; the last
    batch holds the remainder and may be smaller.
    """
    n = check_positive_int("n", n)
    batch_size = check_positive_int("batch_size", batch_size)
    seed = _check_seed("seed", seed, allow_none=True)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


# -- digits -------------------------------------------------------------------------------
def load_digits(test_size: float = 0.2, seed: int = 0, standardize: bool = True) -> Dataset:
    """scikit-learn's 1797 8×8 digits (embedded, no network), split stratified by class.

    Pixels (0..16) are divided by 16; with ``standardize`` they are further
    standardised with the *train* statistics (the fitted :class:`Standardizer`
    is kept in ``Dataset.standardizer``). The split depends only on ``seed``.
    """
    from sklearn.datasets import load_digits as sk_digits

    test_size = check_float_range("test_size", test_size, 0.0, 1.0, low_open=True, high_open=True)
    seed = _check_seed("seed", seed)
    standardize = _check_bool("standardize", standardize)
    raw = sk_digits()
    x = (raw.data / 16.0).astype(np.float32)
    y = raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, seed=seed)
    std = None
    if standardize:
        std = Standardizer().fit(x_train)
        x_train, x_test = std.transform(x_train), std.transform(x_test)
    return Dataset(x_train, y_train, x_test, y_test, 10, "digits", tuple(raw.feature_names), std)
