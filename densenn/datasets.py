"""Datasets: scikit-learn's digits, MNIST from IDX files (or a verified download), helpers.

Everything returns NumPy arrays in the library's convention: features
``(n_samples, n_features)`` float32, labels int64 class indices.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densenn.errors import DensennError, check_float_range, check_matrix, check_positive_int, describe


@dataclass(frozen=True)
class Dataset:
    """A train/test split: ``x_*`` float32 ``(n, n_features)``, ``y_*`` int64 class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    standardizer: "Standardizer | None" = None

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def __repr__(self):
        return (f"Dataset({self.name!r}: train {self.x_train.shape}, test {self.x_test.shape}, "
                f"{self.n_classes} classes)")


# -- helpers ------------------------------------------------------------------------------
def _check_xy(x, y):
    x = check_matrix("x", x)
    y = np.asarray(y)
    if y.shape[:1] != (x.shape[0],):
        raise DensennError(f"y must have {x.shape[0]} rows (one per sample of x), got shape {y.shape}")
    return x, y


def train_test_split(x, y, test_size: float = 0.2, seed: int = 0, stratify: bool = True):
    """(x_train, x_test, y_train, y_test), the test part a ``test_size`` fraction.

    With ``stratify`` (and 1-D class labels) each class keeps its proportion.
    """
    x, y = _check_xy(x, y)
    test_size = check_float_range("test_size", test_size, 0.0, 1.0, low_open=True, high_open=True)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    if stratify and y.ndim == 1:
        test = []
        for cls in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == cls))
            test.append(members[: int(round(test_size * len(members)))])
        test_idx = np.sort(np.concatenate(test))
    else:
        test_idx = np.sort(rng.permutation(n)[: int(round(test_size * n))])
    if len(test_idx) == 0 or len(test_idx) == n:
        raise DensennError(f"test_size={test_size} leaves an empty train or test part for {n} samples")
    train_mask = np.ones(n, dtype=bool)
    train_mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(train_mask))
    test_idx = rng.permutation(test_idx)
    return x[train_idx], x[test_idx], y[train_idx], y[test_idx]


class Standardizer:
    """Per-feature (x - mean) / std with statistics from the training data (std 0 → 1)."""

    def __init__(self, mean=None, std=None):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    def fit(self, x) -> "Standardizer":
        x = check_matrix("x", x)
        self.mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def _check(self, x):
        if self.mean is None:
            raise DensennError("Standardizer is not fitted: call fit(x_train) first")
        return check_matrix("x", x, n_features=self.mean.shape[0])

    def transform(self, x, dtype=np.float32) -> np.ndarray:
        x = self._check(x)
        return ((x - self.mean) / self.std).astype(dtype)

    def fit_transform(self, x, dtype=np.float32) -> np.ndarray:
        return self.fit(x).transform(x, dtype)

    def inverse_transform(self, x) -> np.ndarray:
        x = self._check(x)
        return x * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Standardizer":
        try:
            return cls(d["mean"], d["std"])
        except (KeyError, TypeError) as exc:
            raise DensennError(f"standardizer dict must have 'mean' and 'std', got {describe(d)} ({exc})") from None


def one_hot(y, n_classes: int | None = None, dtype=np.float32) -> np.ndarray:
    """``(n, n_classes)`` rows with a 1 at each label. Labels: non-negative integers < n_classes."""
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0:
        raise DensennError(f"y must be a non-empty 1-D array of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DensennError(f"y must hold integer class indices, got {describe(y)}")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise DensennError(f"y class indices must be non-negative, got {labels.min()}")
    k = int(labels.max()) + 1 if n_classes is None else check_positive_int("n_classes", n_classes)
    if labels.max() >= k:
        raise DensennError(f"y class indices must be below n_classes={k}, got {labels.max()}")
    out = np.zeros((labels.size, k), dtype=dtype)
    out[np.arange(labels.size), labels] = 1
    return out


def batches(n: int, batch_size: int, seed: int | None = None):
    """Index arrays covering range(n) in batches (shuffled when ``seed`` is given; last may be smaller)."""
    n = check_positive_int("n", n)
    batch_size = check_positive_int("batch_size", batch_size)
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


# -- digits -------------------------------------------------------------------------------
def load_digits(test_size: float = 0.2, seed: int = 0, standardize: bool = True) -> Dataset:
    """scikit-learn's 1797 8×8 digits (offline), pixels scaled to [0, 1], split stratified.

    With ``standardize`` the features are standardised with the train statistics
    (kept in ``Dataset.standardizer``).
    """
    from sklearn.datasets import load_digits as sk_digits

    raw = sk_digits()
    x = (raw.data / 16.0).astype(np.float32)
    y = raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, seed=seed)
    std = None
    if standardize:
        std = Standardizer().fit(x_train)
        x_train, x_test = std.transform(x_train), std.transform(x_test)
    return Dataset(x_train, y_train, x_test, y_test, 10, "digits", std)


# -- IDX files and MNIST ----------------------------------------------------------------------
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DensennError(f"cannot read IDX file {str(path)!r}: {exc}") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array in IDX-format bytes (magic 0 0 type ndim, big-endian uint32 dims, data)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DensennError(f"{source} is not an IDX file (bad magic {data[:4].hex() if data else 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DensennError(f"{source} is a truncated IDX file (header of {ndim} dimensions incomplete)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise DensennError(f"{source} has {len(data)} bytes, but its header {dims} of {dtype} needs {expected} "
                           "(truncated or corrupted)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or raw."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / (stem + ".gz"), folder / stem):
        if candidate.is_file():
            return candidate
    raise DensennError(f"MNIST file {stem}(.gz) not found in {str(folder)!r}")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DENSENN_DATA", Path.home() / ".cache" / "densenn")) / "mnist"


def load_mnist(data_dir=None, standardize: bool = False, flatten: bool = True, download: bool = False) -> Dataset:
    """MNIST from the four standard IDX files (``.gz`` or raw) in ``data_dir``.

    Images become float32 in [0, 1] (flattened to 784 features unless
    ``flatten=False``); ``standardize`` further standardises with train
    statistics. ``data_dir=None`` uses the download cache (``$DENSENN_DATA`` or
    ``~/.cache/densenn``), downloading first when ``download=True``.
    """
    if data_dir is None:
        data_dir = download_mnist() if download else default_cache_dir()
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DensennError(f"MNIST folder {str(folder)!r} does not exist (give --data-dir, or download=True)")
    arrays = {stem: read_idx(_find(folder, stem)) for stem in MNIST_FILES}
    parts = []
    for prefix in ("train", "t10k"):
        images, labels = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DensennError(f"MNIST {prefix} files in {str(folder)!r} disagree: images {images.shape}, "
                               f"labels {labels.shape}")
        x = images.astype(np.float32) / 255.0
        parts.append((x.reshape(len(x), -1) if flatten else x, labels.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = parts
    std = None
    if standardize:
        if not flatten:
            raise DensennError("standardize=True needs flatten=True")
        std = Standardizer().fit(x_train)
        x_train, x_test = std.transform(x_train), std.transform(x_test)
    return Dataset(x_train, y_train, x_test, y_test, 10, "mnist", std)


def download_mnist(cache_dir=None, base_url: str = MNIST_URL, force: bool = False, timeout: float = 60.0) -> Path:
    """Download the four MNIST ``.gz`` files into ``cache_dir`` and verify them; returns the folder.

    Each file's *uncompressed* content must match its published sha256; a file
    that does not is deleted and a DensennError raised. Files already present and
    verified are kept (unless ``force``). Each download goes to a temporary file
    in the same folder and is renamed into place only once verified.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for stem, digest in MNIST_FILES.items():
        target = folder / (stem + ".gz")
        if target.is_file() and not force:
            if hashlib.sha256(_read_bytes(target)).hexdigest() == digest:
                continue
        url = base_url.rstrip("/") + "/" + stem + ".gz"
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            got = hashlib.sha256(_gunzip_file(tmp, url)).hexdigest()
            if got != digest:
                raise DensennError(f"download of {url} failed verification: sha256 of its content is {got}, "
                                   f"expected {digest}")
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DensennError(f"cannot download {url}: {exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return folder


def _gunzip_file(path: str, url: str) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as exc:
        raise DensennError(f"download of {url} is not a valid gzip file: {exc}") from None
