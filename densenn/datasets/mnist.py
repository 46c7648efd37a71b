"""MNIST from the four standard IDX files, or a download verified by sha256."""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from densenn.config import setting
from densenn.datasets.core import Dataset, Standardizer, _check_bool
from densenn.datasets.idx import read_idx
from densenn.errors import DensennError, check_float_range, describe

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
