"""densenn.datasets: digits, IDX parsing, MNIST from files and through a verified download, helpers.

The download tests run against a local HTTP server on 127.0.0.1 only.
"""
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


def need_mnist():
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST folder {MNIST_DIR} not found")


def idx_bytes(arr: np.ndarray, type_code=0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_fake_mnist(folder: Path, n_train=6, n_test=4, compress=True):
    """Four tiny MNIST-shaped IDX files; returns the raw images and labels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            (folder / (stem + ".gz" if compress else stem)).write_bytes(gzip.compress(data) if compress else data)
        out[prefix] = (images, labels)
    return out


# -- digits ---------------------------------------------------------------------------------
def test_digits_shapes_stratified_and_reproducible():
    d = ds.load_digits(test_size=0.25, seed=3)
    assert d.x_train.shape == (1348, 64) and d.x_test.shape == (449, 64)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.n_classes == 10 and d.name == "digits" and len(d.feature_names) == 64
    train_share = np.bincount(d.y_train) / len(d.y_train)
    test_share = np.bincount(d.y_test) / len(d.y_test)
    assert np.abs(train_share - test_share).max() < 0.01            # every class keeps its share
    again = ds.load_digits(test_size=0.25, seed=3)
    np.testing.assert_array_equal(d.x_test, again.x_test)
    np.testing.assert_array_equal(d.y_train, again.y_train)
    assert not np.array_equal(d.y_test, ds.load_digits(test_size=0.25, seed=4).y_test)


def test_digits_scaled_then_standardised_with_train_statistics():
    raw = ds.load_digits(seed=1, standardize=False)
    assert raw.standardizer is None and 0.0 <= raw.x_train.min() and raw.x_train.max() <= 1.0
    std = ds.load_digits(seed=1)
    mean = raw.x_train.mean(axis=0, dtype=np.float64)
    scale = raw.x_train.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0
    np.testing.assert_allclose(std.x_train, (raw.x_train - mean) / scale, atol=1e-5)
    np.testing.assert_allclose(std.x_test, (raw.x_test - mean) / scale, atol=1e-5)   # train stats, not test
    np.testing.assert_allclose(std.standardizer.mean, mean)
    assert np.abs(std.x_test.mean(axis=0)).max() > 1e-3


def test_digits_bad_arguments():
    with pytest.raises(DensennError, match=r"test_size must be a number in \(0.0, 1.0\), got 1"):
        ds.load_digits(test_size=1)
    with pytest.raises(DensennError, match="seed must be a non-negative integer"):
        ds.load_digits(seed=-1)
    with pytest.raises(DensennError, match="standardize must be True or False, got 'yes'"):
        ds.load_digits(standardize="yes")


# -- helpers --------------------------------------------------------------------------------
def test_train_test_split_stratified_exact_and_reproducible():
    x = np.arange(40, dtype=float).reshape(20, 2)
    y = np.repeat([0, 1], 10)
    xtr, xte, ytr, yte = ds.train_test_split(x, y, test_size=0.3, seed=0)
    assert len(xte) == 6 and np.bincount(yte).tolist() == [3, 3]
    assert sorted(map(tuple, np.vstack([xtr, xte]))) == sorted(map(tuple, x))    # a partition
    np.testing.assert_array_equal(ytr, (xtr[:, 0] >= 20).astype(int))             # rows stay paired
    again = ds.train_test_split(x, y, test_size=0.3, seed=0)
    np.testing.assert_array_equal(again[1], xte)
    # uneven classes: the total is still round(test_size * n)
    y3 = np.array([0] * 7 + [1] * 7 + [2] * 6)
    assert len(ds.train_test_split(x, y3, test_size=0.25)[1]) == 5
    # regression targets are split at random
    assert ds.train_test_split(x, np.linspace(0, 1, 20), test_size=0.5)[1].shape == (10, 2)


def test_train_test_split_bad_inputs():
    x = np.zeros((20, 2))
    y = np.zeros(20, dtype=int)
    with pytest.raises(DensennError, match="test_size must be a number in"):
        ds.train_test_split(x, y, test_size=1.5)
    with pytest.raises(DensennError, match="test_size must be a number in"):
        ds.train_test_split(x, y, test_size=0)
    with pytest.raises(DensennError, match=r"y must have 20 rows .* got shape \(5,\)"):
        ds.train_test_split(x, y[:5])
    with pytest.raises(DensennError, match="x contains 1 NaN"):
        ds.train_test_split(np.r_[[[np.nan, 0.0]], x[1:]], y)
    with pytest.raises(DensennError, match="y contains 1 NaN"):
        ds.train_test_split(x, np.r_[np.nan, np.zeros(19)])
    with pytest.raises(DensennError, match="x must be 2-D"):
        ds.train_test_split(np.zeros(20), y)
    with pytest.raises(DensennError, match="empty train or test part"):
        ds.train_test_split(x[:3], y[:3], test_size=0.1)
    with pytest.raises(DensennError, match="stratify must be True or False"):
        ds.train_test_split(x, y, stratify=None)


def test_standardizer_round_trip_and_dict():
    x = np.random.default_rng(0).normal(3, 2, size=(50, 4))
    x[:, 2] = 0.1                                                    # constant feature: std counted as 1
    s = ds.Standardizer().fit(x)
    z = s.transform(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, [0, 1, 3]].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, [0, 1, 3]].std(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(z[:, 2], 0)
    assert s.std[2] == 1.0
    np.testing.assert_allclose(s.inverse_transform(z), x, atol=1e-5)
    np.testing.assert_array_equal(ds.Standardizer().fit_transform(x), z)
    s2 = ds.Standardizer.from_dict(s.to_dict())
    np.testing.assert_array_equal(s2.transform(x), z)


def test_standardizer_bad_inputs():
    x = np.ones((5, 4))
    with pytest.raises(DensennError, match="not fitted"):
        ds.Standardizer().transform(x)
    with pytest.raises(DensennError, match="not fitted"):
        ds.Standardizer().to_dict()
    s = ds.Standardizer().fit(x)
    with pytest.raises(DensennError, match="x must have 4 features"):
        s.transform(x[:, :3])
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(DensennError, match="x contains 1 NaN or infinite"):
        s.transform(bad)
    with pytest.raises(DensennError, match="must have keys 'mean' and 'std'"):
        ds.Standardizer.from_dict({"mean": [0.0]})
    with pytest.raises(DensennError, match=r"std must be 2 numbers, got shape \(3,\)"):
        ds.Standardizer.from_dict({"mean": [0.0, 1.0], "std": [1.0, 1.0, 1.0]})
    with pytest.raises(DensennError, match="std must be positive"):
        ds.Standardizer.from_dict({"mean": [0.0], "std": [0.0]})


def test_one_hot():
    np.testing.assert_array_equal(ds.one_hot([0, 2, 1.0], 3), [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    out = ds.one_hot(np.array([1, 0], dtype=np.uint8), dtype=np.float64)
    assert out.shape == (2, 2) and out.dtype == np.float64
    assert ds.one_hot([1], 4).tolist() == [[0, 1, 0, 0]]


def test_one_hot_bad_inputs():
    with pytest.raises(DensennError, match="below n_classes=3, got 3"):
        ds.one_hot([0, 3], 3)
    with pytest.raises(DensennError, match="non-negative, got -1"):
        ds.one_hot([0, -1])
    with pytest.raises(DensennError, match="integer class indices, got 1 non-whole value.*0.5"):
        ds.one_hot([0.5, 1])
    with pytest.raises(DensennError, match="integer class indices"):
        ds.one_hot([np.nan, 1])
    with pytest.raises(DensennError, match="integer class indices, got dtype"):
        ds.one_hot(["a", "b"])
    with pytest.raises(DensennError, match="1-D"):
        ds.one_hot(np.zeros((2, 2)))
    with pytest.raises(DensennError, match="non-empty"):
        ds.one_hot([])
    with pytest.raises(DensennError, match="n_classes must be a positive integer, got 0"):
        ds.one_hot([0], 0)


def test_batches():
    assert [b.tolist() for b in ds.batches(5, 2)] == [[0, 1], [2, 3], [4]]
    got = list(ds.batches(10, 4, seed=1))
    assert [len(b) for b in got] == [4, 4, 2]
    assert sorted(np.concatenate(got).tolist()) == list(range(10))
    assert np.concatenate(got).tolist() != list(range(10))
    assert [b.tolist() for b in ds.batches(10, 4, seed=1)] == [b.tolist() for b in got]
    assert [b.tolist() for b in ds.batches(3, 10)] == [[0, 1, 2]]
    with pytest.raises(DensennError, match="batch_size must be a positive integer, got 0"):
        list(ds.batches(10, 0))
    with pytest.raises(DensennError, match="n must be a positive integer, got 2.5"):
        list(ds.batches(2.5, 1))
    with pytest.raises(DensennError, match="seed must be a non-negative integer or None"):
        list(ds.batches(4, 2, seed="x"))


# -- IDX ------------------------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_raw_and_gz(tmp_path, compressed):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    path = tmp_path / ("a-idx3-ubyte.gz" if compressed else "a-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if compressed else data)
    got = ds.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, arr)
    got[0, 0, 0] = 9                                                 # a writable copy


@pytest.mark.parametrize("dtype,code", [(np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
                                        (np.float32, 0x0D), (np.float64, 0x0E)])
def test_read_idx_other_types(tmp_path, dtype, code):
    arr = np.array([[1, -2, 3], [-4, 5, -6]], dtype=dtype) * (70 if dtype != np.int8 else 1)
    path = tmp_path / "t.idx"
    path.write_bytes(idx_bytes(arr, code))
    got = ds.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_bad_idx_files(tmp_path):
    good = idx_bytes(np.zeros((4, 5), np.uint8))
    cases = {
        "truncated.idx": (good[:-3], r"truncated: 29 bytes, but its header \(shape \(4, 5\), uint8\) needs 32"),
        "short-header.idx": (good[:6], "truncated IDX file"),
        "tiny.idx": (b"\x00\x00", "truncated IDX file"),
        "magic.idx": (b"\x01\x02" + good[2:], "not an IDX file: magic 01 02"),
        "type.idx": (good[:2] + b"\x07" + good[3:], "unknown IDX type code 0x07"),
        "long.idx": (good + b"\x00", "too long"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DensennError, match=message) as info:
            ds.read_idx(path)
        assert name in str(info.value)                               # the error names the file
    bad_gz = tmp_path / "broken.gz"
    bad_gz.write_bytes(gzip.compress(good)[:20])
    with pytest.raises(DensennError, match="cannot read IDX file.*broken.gz"):
        ds.read_idx(bad_gz)
    truncated_gz = tmp_path / "truncated.gz"
    truncated_gz.write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(DensennError, match="truncated.gz.* is truncated"):
        ds.read_idx(truncated_gz)
    with pytest.raises(DensennError, match="cannot read IDX file.*missing"):
        ds.read_idx(tmp_path / "missing")


# -- MNIST from files -----------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_small_files(tmp_path, compress):
    raw = write_fake_mnist(tmp_path / "m", compress=compress)
    d = ds.load_mnist(tmp_path / "m")
    assert d.x_train.shape == (6, 784) and d.x_test.shape == (4, 784) and d.x_train.dtype == np.float32
    np.testing.assert_allclose(d.x_train, raw["train"][0].reshape(6, -1) / 255.0, rtol=1e-6)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    np.testing.assert_array_equal(d.y_test, raw["t10k"][1])
    assert d.y_train.dtype == np.int64 and d.n_classes == 10
    images = ds.load_mnist(str(tmp_path / "m"), flatten=False)
    assert images.x_train.shape == (6, 28, 28)
    std = ds.load_mnist(tmp_path / "m", standardize=True)
    np.testing.assert_allclose(std.x_train.mean(axis=0), 0, atol=1e-5)


def test_load_mnist_missing_folder_file_and_mismatch(tmp_path):
    with pytest.raises(DensennError, match="MNIST folder .*nope.* does not exist"):
        ds.load_mnist(tmp_path / "nope")
    with pytest.raises(DensennError, match=r"'train-images-idx3-ubyte' \(or 'train-images-idx3-ubyte.gz'\) "
                                           f"not found in '{tmp_path}'"):
        ds.load_mnist(tmp_path)
    folder = tmp_path / "m"
    write_fake_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DensennError, match="t10k-labels-idx1-ubyte"):
        ds.load_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))   # 4 images, 3 labels
    with pytest.raises(DensennError, match="MNIST t10k files .* do not match"):
        ds.load_mnist(folder)
    with pytest.raises(DensennError, match="flatten must be True or False"):
        ds.load_mnist(folder, flatten=1)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSENN_DATA", str(tmp_path / "data"))
    assert ds.default_cache_dir() == tmp_path / "data" / "mnist"
    with pytest.raises(DensennError, match="data.mnist.* does not exist.*download=True"):
        ds.load_mnist()
    write_fake_mnist(tmp_path / "data" / "mnist")
    assert ds.load_mnist().x_train.shape == (6, 784)
    monkeypatch.delenv("DENSENN_DATA")
    assert ds.default_cache_dir() == Path.home() / ".cache" / "densenn" / "mnist"


def test_real_mnist():
    need_mnist()
    d = ds.load_mnist(MNIST_DIR)
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.y_train.shape == (60000,) and d.y_test.shape == (10000,)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0 and d.x_test.max() <= 1.0
    assert np.unique(d.y_train).tolist() == list(range(10))
    assert np.unique(d.y_test).tolist() == list(range(10))


# -- download through a local HTTP server (127.0.0.1 only) --------------------------------------
class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``folder``, counting GET requests."""

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
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    """serve(folder) -> a running LocalServer; every server is shut down after the test."""
    servers = []

    def start(folder):
        servers.append(LocalServer(folder))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def mnist_copy(tmp_path):
    """A writable copy of the MNIST folder (skips when it is absent)."""
    need_mnist()
    root = tmp_path / "served"
    root.mkdir()
    for path in MNIST_DIR.glob("*.gz"):
        shutil.copyfile(path, root / path.name)
    return root


def test_download_verifies_caches_and_loads(mnist_copy, serve, tmp_path, monkeypatch):
    server = serve(mnist_copy)
    monkeypatch.setenv("DENSENN_DATA", str(tmp_path / "data"))
    cache = tmp_path / "data" / "mnist"
    d = ds.load_mnist(download=True, base_url=server.url)           # downloads into $DENSENN_DATA/mnist
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert sorted(p.name for p in cache.iterdir()) == sorted(s + ".gz" for s in ds.MNIST_FILES)
    assert sorted(server.requests) == sorted(f"/{s}.gz" for s in ds.MNIST_FILES)
    assert ds.download_mnist(cache, base_url=server.url.rstrip("/")) == cache   # verified: nothing fetched
    assert len(server.requests) == 4
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")     # a corrupt cached file is replaced
    ds.download_mnist(cache, base_url=server.url)
    assert server.requests[4:] == ["/t10k-labels-idx1-ubyte.gz"]
    ds.download_mnist(cache, base_url=server.url, force=True)
    assert len(server.requests) == 9


def test_download_refuses_corrupted_file_and_leaves_nothing(mnist_copy, serve, tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    labels = bytearray(gzip.decompress((mnist_copy / name).read_bytes()))
    labels[100] = (labels[100] + 1) % 10
    (mnist_copy / name).write_bytes(gzip.compress(bytes(labels)))
    server = serve(mnist_copy)
    cache = tmp_path / "cache"
    with pytest.raises(DensennError, match=f"download of {server.url}{name} failed verification.*"
                                           f"expected sha256 {ds.MNIST_FILES[name[:-3]]}"):
        ds.download_mnist(cache, base_url=server.url)
    assert not (cache / name).exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_download_not_gzip_and_missing_files(serve, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "train-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    server = serve(served)
    cache = tmp_path / "cache"
    with pytest.raises(DensennError, match="not a valid gzip file"):
        ds.download_mnist(cache, base_url=server.url)
    assert list(cache.iterdir()) == []
    (served / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DensennError, match=f"cannot download {server.url}train-images-idx3-ubyte.gz.*404"):
        ds.download_mnist(cache, base_url=server.url)
    assert list(cache.iterdir()) == []


def test_download_bad_arguments(tmp_path):
    with pytest.raises(DensennError, match="base_url must be an http"):
        ds.download_mnist(tmp_path, base_url="ftp://example.invalid/")
    with pytest.raises(DensennError, match="force must be True or False"):
        ds.download_mnist(tmp_path, base_url="http://127.0.0.1:9/", force="no")
    with pytest.raises(DensennError, match="cache_dir must be a folder path"):
        ds.download_mnist(3)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DensennError, match="cannot create the MNIST cache folder"):
        ds.download_mnist(blocker / "sub", base_url="http://127.0.0.1:9/")
