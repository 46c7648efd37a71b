"""Datasets: digits, IDX parsing, MNIST from files and through a verified download."""
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from densenn import DensennError
from densenn import datasets as ds

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST folder {MNIST_DIR} not found")


def idx_bytes(arr: np.ndarray, type_code=0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# -- digits and helpers -------------------------------------------------------------------
def test_digits_split_is_stratified_reproducible_and_standardised_on_train():
    d = ds.load_digits(test_size=0.25, seed=3)
    assert d.x_train.shape[1] == 64 and d.x_train.dtype == np.float32
    assert len(d.x_train) + len(d.x_test) == 1797
    assert abs(len(d.x_test) / 1797 - 0.25) < 0.01
    # every class keeps its share in the test part
    train_share = np.bincount(d.y_train) / len(d.y_train)
    test_share = np.bincount(d.y_test) / len(d.y_test)
    assert np.abs(train_share - test_share).max() < 0.01
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.abs(d.x_test.mean(axis=0)).max() > 1e-3          # test uses train statistics
    again = ds.load_digits(test_size=0.25, seed=3)
    np.testing.assert_array_equal(d.x_test, again.x_test)
    other = ds.load_digits(test_size=0.25, seed=4)
    assert not np.array_equal(d.y_test, other.y_test)


def test_standardizer_round_trip_and_dict():
    x = np.random.default_rng(0).normal(3, 2, size=(50, 4))
    x[:, 2] = 7.0                                                  # a constant feature: std 1
    s = ds.Standardizer().fit(x)
    z = s.transform(x)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(axis=0), 1, atol=1e-5)
    np.testing.assert_allclose(z[:, 2], 0)
    np.testing.assert_allclose(s.inverse_transform(z), x, atol=1e-5)
    s2 = ds.Standardizer.from_dict(s.to_dict())
    np.testing.assert_array_equal(s2.transform(x), z)
    with pytest.raises(DensennError, match="not fitted"):
        ds.Standardizer().transform(x)
    with pytest.raises(DensennError, match="4 features"):
        s.transform(x[:, :3])


def test_one_hot_and_its_bad_inputs():
    np.testing.assert_array_equal(ds.one_hot([0, 2, 1.0], 3), [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    with pytest.raises(DensennError, match="below n_classes=3"):
        ds.one_hot([0, 3], 3)
    with pytest.raises(DensennError, match="non-negative"):
        ds.one_hot([0, -1])
    with pytest.raises(DensennError, match="integer class indices"):
        ds.one_hot([0.5, 1])
    with pytest.raises(DensennError, match="1-D"):
        ds.one_hot(np.zeros((2, 2)))


def test_train_test_split_and_batches():
    x = np.arange(40, dtype=float).reshape(20, 2)
    y = np.repeat([0, 1], 10)
    xtr, xte, ytr, yte = ds.train_test_split(x, y, test_size=0.3, seed=0)
    assert len(xte) == 6 and sorted(np.bincount(yte)) == [3, 3]
    assert set(map(tuple, xtr)) | set(map(tuple, xte)) == set(map(tuple, x))
    with pytest.raises(DensennError, match="test_size"):
        ds.train_test_split(x, y, test_size=1.5)
    with pytest.raises(DensennError, match="20 rows"):
        ds.train_test_split(x, y[:5])
    got = list(ds.batches(10, 4, seed=1))
    assert [len(b) for b in got] == [4, 4, 2]
    assert sorted(np.concatenate(got)) == list(range(10))
    with pytest.raises(DensennError, match="batch_size"):
        list(ds.batches(10, 0))


# -- IDX ---------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_raw_and_gz(tmp_path, compressed):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    path.write_bytes(gzip.compress(data) if compressed else data)
    np.testing.assert_array_equal(ds.read_idx(path), arr)


def test_read_idx_other_types():
    arr = np.array([[1.5, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(ds.parse_idx(idx_bytes(arr, 0x0D)), arr)
    arr = np.array([70000, -3], dtype=np.int32)
    np.testing.assert_array_equal(ds.parse_idx(idx_bytes(arr, 0x0C)), arr)


def test_bad_idx_files(tmp_path):
    good = idx_bytes(np.zeros((4, 5), np.uint8))
    with pytest.raises(DensennError, match="truncated"):
        ds.parse_idx(good[:-3], "x")
    with pytest.raises(DensennError, match="not an IDX file"):
        ds.parse_idx(b"\x01\x02" + good[2:], "x")
    bad = tmp_path / "broken.gz"
    bad.write_bytes(gzip.compress(good)[:20])
    with pytest.raises(DensennError, match="broken.gz"):
        ds.read_idx(bad)


def test_load_mnist_missing_folder_and_file(tmp_path):
    with pytest.raises(DensennError, match="does not exist"):
        ds.load_mnist(tmp_path / "nope")
    with pytest.raises(DensennError, match="train-images-idx3-ubyte"):
        ds.load_mnist(tmp_path)


@needs_mnist
def test_real_mnist():
    d = ds.load_mnist(MNIST_DIR)
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert sorted(np.unique(d.y_train)) == list(range(10))
    assert set(np.unique(d.y_test)) <= set(range(10))


# -- download through a local HTTP server ----------------------------------------------------
class _Server:
    def __init__(self, folder: Path):
        self.requests = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path):
    """A copy of the MNIST folder served on 127.0.0.1, and the server."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST folder {MNIST_DIR} not found")
    root = tmp_path / "served"
    shutil.copytree(MNIST_DIR, root)
    server = _Server(root)
    yield root, server
    server.close()


def test_download_verifies_caches_and_loads(served, tmp_path):
    _, server = served
    cache = tmp_path / "cache"
    folder = ds.download_mnist(cache, base_url=server.url)
    assert sorted(p.name for p in folder.iterdir()) == sorted(s + ".gz" for s in ds.MNIST_FILES)
    assert len(server.requests) == 4
    d = ds.load_mnist(folder)
    assert d.x_train.shape == (60000, 784)
    ds.download_mnist(cache, base_url=server.url)        # verified files are not fetched again
    assert len(server.requests) == 4


def test_download_refuses_corrupted_file_and_leaves_nothing(served, tmp_path):
    root, server = served
    name = "t10k-labels-idx1-ubyte.gz"
    labels = bytearray(gzip.decompress((root / name).read_bytes()))
    labels[100] = (labels[100] + 1) % 10
    (root / name).write_bytes(gzip.compress(bytes(labels)))
    cache = tmp_path / "cache"
    with pytest.raises(DensennError, match="failed verification"):
        ds.download_mnist(cache, base_url=server.url)
    assert not (cache / name).exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_download_from_unreachable_server_is_a_clear_error(tmp_path):
    server = _Server(tmp_path)      # serves an empty folder: every file is a 404
    try:
        with pytest.raises(DensennError, match="cannot download"):
            ds.download_mnist(tmp_path / "cache", base_url=server.url)
    finally:
        server.close()
