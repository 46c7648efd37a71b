"""Datasets: scikit-learn's digits, MNIST from IDX files (or a verified download), helpers.

Everything follows the library's convention: features ``(n_samples, n_features)``
float32, labels int64 class indices.

* :func:`load_digits` — the 1797 8×8 digits shipped with scikit-learn (offline).
* :func:`read_idx` / :func:`load_mnist` — MNIST from the four standard IDX files.
* :func:`download_mnist` — fetch those files into a cache, verified by sha256.
* :func:`train_test_split`, :class:`Standardizer`, :func:`one_hot`, :func:`batches`.
"""
from densenn.datasets.core import Dataset, Standardizer, batches, load_digits, one_hot, train_test_split
from densenn.datasets.idx import MAX_IDX_BYTES, parse_idx, read_idx
from densenn.datasets.mnist import MNIST_FILES, MNIST_URL, default_cache_dir, download_mnist, load_mnist

__all__ = ["Dataset", "load_digits", "read_idx", "parse_idx", "load_mnist", "download_mnist",
           "default_cache_dir", "train_test_split", "Standardizer", "one_hot", "batches",
           "MNIST_FILES", "MNIST_URL", "MAX_IDX_BYTES"]
