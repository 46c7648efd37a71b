"""Datasets: scikit-learn's digits, MNIST from IDX files (or a verified download), helpers.

Everything follows the library's convention: features ``(n_samples, n_features)``
float32, labels int64 class indices.

* :func:`load_digits` — the 1797 8×8 digits shipped with scikit-learn (offline).
* :func:`read_idx` / :func:`load_mnist` — MNIST from the four standard IDX files.
* :func:`download_mnist` — fetch those files into a cache, verified by sha256.
* :func:`train_test_split`, :class:`Standardizer`, :func:`one_hot`, :func:`batches`.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import numbers
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densenn.config import setting
from densenn.errors import DensennError, check_float_range, check_matrix, check_positive_int, describe

__all__ = ["Dataset", "load_digits", "read_idx", "parse_idx", "load_mnist", "download_mnist",
           "default_cache_dir", "train_test_split", "Standardizer", "one_hot", "batches",
           "MNIST_FILES", "MNIST_URL"]


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


# -- IDX files ------------------------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


#: the largest IDX payload read (4 GiB; MNIST's largest file holds 47 MB): a header claiming
#: more is refused before anything is decompressed
MAX_IDX_BYTES = 1 << 32


def _idx_layout(head: bytes, source: str) -> tuple[tuple, np.dtype, int, int]:
    """(dims, dtype, header length, total length) from the start of IDX bytes.

    ``head`` must hold at least the magic; DensennError (naming ``source``) for a bad magic
    or type, a truncated header, or a payload over MAX_IDX_BYTES."""
    if len(head) < 4:
        raise DensennError(f"{source} is a truncated IDX file: {len(head)} bytes, expected at least a 4-byte magic")
    if head[0] != 0 or head[1] != 0:
        raise DensennError(f"{source} is not an IDX file: magic {head[:4].hex(' ')}, expected 00 00 <type> <ndim>")
    if head[2] not in _IDX_TYPES:
        known = ", ".join(f"0x{t:02X}" for t in _IDX_TYPES)
        raise DensennError(f"{source} has unknown IDX type code 0x{head[2]:02X}, expected one of {known}")
    ndim = head[3]
    if ndim == 0:
        raise DensennError(f"{source} declares 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DensennError(f"{source} is a truncated IDX file: {len(head)} bytes, but a header with "
                           f"{ndim} dimensions needs {header}")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[head[2]])
    payload = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if payload > MAX_IDX_BYTES:
        raise DensennError(f"{source} declares shape {dims} ({dtype.name}): {payload:,} bytes, larger than "
                           f"the {MAX_IDX_BYTES:,} an IDX file may hold here")
    return dims, dtype, header, header + payload


def _read_bytes(path: Path, source: str) -> bytes:
    """The file's content, gunzipped when it is gzip-compressed (recognised by its magic),
    read no further than its IDX header says it holds (plus one byte, to tell a file that is
    too long): a small gzip that expands to gigabytes is never expanded."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            with (gzip.GzipFile(fileobj=raw) if compressed else raw) as f:
                head = f.read(4)
                if len(head) == 4:
                    head += f.read(4 * head[3])
                    _, _, header, total = _idx_layout(head, source)
                    head += f.read(total - header + 1)
                return head
    except (OSError, EOFError, zlib.error) as exc:
        raise DensennError(f"cannot read IDX file {str(path)!r}: {exc}") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array held in IDX-format bytes; ``source`` names them in error messages.

    Layout: magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
    dimensions, then the data, big-endian, row-major. Types: 0x08 uint8,
    0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. The result
    is a writable array in native byte order. Payloads over MAX_IDX_BYTES are refused.
    """
    dims, dtype, header, expected = _idx_layout(data, source)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise DensennError(f"{source} is {what}: {len(data)} bytes, but its header (shape {dims}, {dtype.name}) "
                           f"needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or raw; errors name the file."""
    if not isinstance(path, (str, os.PathLike)):
        raise DensennError(f"path must be a file path, got {describe(path)}")
    path = Path(path)
    source = f"IDX file {str(path)!r}"
    return parse_idx(_read_bytes(path, source), source)


# -- MNIST --------------------------------------------------------------------------------
MNIST_FILES = {  # sha256 of the *uncompressed* files, as published
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"


def default_cache_dir() -> Path:
    """Where MNIST is cached: ``$DENSENN_DATA/mnist``, or ``~/.cache/densenn/mnist``."""
    return Path(setting("DENSENN_DATA")).expanduser() / "mnist"


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / (stem + ".gz"), folder / stem):
        if candidate.is_file():
            return candidate
    raise DensennError(f"MNIST file {stem!r} (or {stem + '.gz'!r}) not found in {str(folder)!r}")


def load_mnist(data_dir=None, standardize: bool = False, flatten: bool = True, download: bool = False,
               base_url: str = MNIST_URL) -> Dataset:
    """MNIST (60000 train, 10000 test) from the four standard IDX files in ``data_dir``.

    Each file may be ``.gz`` or raw. Images become float32 in [0, 1], flattened
    to ``(n, 784)`` unless ``flatten=False`` (then ``(n, 28, 28)``);
    ``standardize`` further standardises each pixel with the train statistics.
    ``data_dir=None`` means the cache (:func:`default_cache_dir`); with
    ``download=True`` the files are first fetched there (or into ``data_dir``)
    from ``base_url`` and verified, see :func:`download_mnist`.
    """
    standardize = _check_bool("standardize", standardize)
    flatten = _check_bool("flatten", flatten)
    if _check_bool("download", download):
        folder = download_mnist(data_dir, base_url=base_url)
    else:
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise DensennError(f"data_dir must be a folder path or None, got {describe(data_dir)}")
        folder = Path(data_dir) if data_dir is not None else default_cache_dir()
    if not folder.is_dir():
        hint = "; pass data_dir=, or download=True to fetch MNIST into it" if data_dir is None else ""
        raise DensennError(f"MNIST folder {str(folder)!r} does not exist (expected the four IDX files there){hint}")
    arrays = {stem: read_idx(_find(folder, stem)) for stem in MNIST_FILES}
    parts = []
    for prefix in ("train", "t10k"):
        images, labels = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DensennError(f"MNIST {prefix} files in {str(folder)!r} do not match: expected uint8 images "
                               f"(n, rows, cols) and n labels, got images {images.shape} {images.dtype}, "
                               f"labels {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DensennError(f"MNIST {prefix} labels in {str(folder)!r} must be 0..9, "
                               f"got {labels.min()}..{labels.max()}")
        x = images.astype(np.float32) / np.float32(255.0)
        parts.append((x.reshape(len(x), -1) if flatten else x, labels.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = parts
    std = None
    if standardize:
        std = Standardizer().fit(x_train.reshape(len(x_train), -1))
        x_train = std.transform(x_train.reshape(len(x_train), -1)).reshape(x_train.shape)
        x_test = std.transform(x_test.reshape(len(x_test), -1)).reshape(x_test.shape)
    return Dataset(x_train, y_train, x_test, y_test, 10, "mnist", None, std)


def _gunzipped_sha256(path: Path) -> str | None:
    """sha256 of the gunzipped content of ``path``, or None when it is not valid gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def download_mnist(cache_dir=None, base_url: str = MNIST_URL, force: bool = False,
                   timeout: float = 60.0) -> Path:
    """Download the four MNIST ``.gz`` files into ``cache_dir`` and verify them; returns the folder.

    ``cache_dir`` defaults to :func:`default_cache_dir` (``$DENSENN_DATA/mnist``
    or ``~/.cache/densenn/mnist``). Each file's *uncompressed* content must
    match its published sha256 (:data:`MNIST_FILES`). Files already present and
    verified are not downloaded again (unless ``force``). Each download goes to
    a temporary file in the same folder and is renamed into place only once
    verified; on a mismatch the download is deleted and DensennError raised.
    Network errors are DensennError naming the URL.
    """
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise DensennError(f"cache_dir must be a folder path or None, got {describe(cache_dir)}")
    if not isinstance(base_url, str) or urllib.parse.urlsplit(base_url).scheme not in ("http", "https", "file"):
        raise DensennError(f"base_url must be an http(s):// or file:// URL, got {describe(base_url)}")
    force = _check_bool("force", force)
    timeout = check_float_range("timeout", timeout, 0.0, float("inf"), low_open=True)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DensennError(f"cannot create the MNIST cache folder {str(folder)!r}: {exc}") from None
    for stem, expected in MNIST_FILES.items():
        target = folder / (stem + ".gz")
        if target.is_file() and not force:
            if _gunzipped_sha256(target) == expected:
                continue
            try:
                target.unlink()      # present but corrupt: fetch it again
            except OSError as exc:
                raise DensennError(f"cannot replace the corrupt file {str(target)!r}: {exc}") from None
        url = base_url.rstrip("/") + "/" + stem + ".gz"
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=folder)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            got = _gunzipped_sha256(Path(tmp))
            if got != expected:
                what = "is not a valid gzip file" if got is None else f"has sha256 {got}"
                raise DensennError(f"download of {url} failed verification: its uncompressed content {what}, "
                                   f"expected sha256 {expected}")
            os.replace(tmp, target)
            tmp = None
        except DensennError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise DensennError(f"cannot download {url} into {str(folder)!r}: {exc}") from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return folder
