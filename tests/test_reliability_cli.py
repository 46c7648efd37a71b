"""The ``densenn`` command keeps finished work and reads its inputs carefully.

* train: an ``--out`` where no file can be created fails before any training; a Ctrl-C
  or a divergence during training saves the network as it stands (exit 130 / 1), and a
  Ctrl-C says how to resume from the checkpoint it wrote.
* predict: a CSV's first row is a header only if none of its fields is a number; a
  malformed, ragged or semicolon-separated CSV is one error line naming the file and
  the line; ``--output`` writes exactly the file named, its folder checked before
  predicting; a folder given as ``--input`` is called a folder.
* the MNIST IDX reader never decompresses more than the header says the file holds.

Real files and real subprocesses throughout; each subprocess is bounded by a timeout.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import densenn as dn
from densenn import DensennError
from densenn import datasets as ds
from densenn.cli import main
from densenn.io import load_extra

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: a real folder where even root cannot create files (sysfs); checked by unwritable_folder()
SYSFS_FOLDER = "/sys/kernel"


def cli_env() -> dict:
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DENSENN_ENGINE", None)
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "densenn", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), cwd=REPO)


def call(*args: str) -> tuple[int, str, str]:
    """main(args) in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def one_error_line(stderr: str) -> str:
    """stderr is exactly one line ``densenn: error: ...`` (no traceback, no warning); returns it."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("densenn: error: "), lines[0]
    return lines[0]


def unwritable_folder() -> str:
    """A folder that exists, that os.access calls writable for root, and where creating a file
    fails all the same; skips when this machine has none."""
    if not os.path.isdir(SYSFS_FOLDER):
        pytest.skip(f"{SYSFS_FOLDER} is not a folder here (no sysfs)")
    probe = os.path.join(SYSFS_FOLDER, f".densenn-test-probe.{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return SYSFS_FOLDER
    os.close(fd)
    os.unlink(probe)
    pytest.skip(f"files can be created in {SYSFS_FOLDER} here, so it cannot stand for an unwritable folder")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A small digits model (64 inputs, 10 classes), trained for one epoch."""
    out = tmp_path_factory.mktemp("model")
    rc, _, stderr = call("train", "--engine", "cpu", "--epochs", "1", "--layers", "16", "--no-progress",
                         "--out", str(out))
    assert rc == 0, stderr
    return str(out / "model.dn")


def digits_rows(n: int) -> np.ndarray:
    return ds.load_digits(standardize=False).x_test[:n].astype(np.float64)


# =========================================================================================
# 1. train keeps finished work
# =========================================================================================
def test_train_out_where_no_file_can_be_created_fails_before_training():
    folder = unwritable_folder()
    start = time.perf_counter()
    rc, stdout, stderr = call("train", "--engine", "cpu", "--epochs", "3", "--no-progress", "--out", folder)
    line = one_error_line(stderr)
    assert rc == 1
    assert "--out" in line and folder in line and "cannot create files" in line
    assert stdout == ""                 # not even the header: no data loaded, nothing trained
    assert time.perf_counter() - start < 5


def test_train_out_whose_folder_cannot_be_created_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    targets = [str(blocker / "run")]
    if os.path.isdir(SYSFS_FOLDER):
        targets.append(os.path.join(SYSFS_FOLDER, "densenn-run", "sub"))
    for out in targets:
        rc, stdout, stderr = call("train", "--engine", "cpu", "--epochs", "3", "--no-progress", "--out", out)
        line = one_error_line(stderr)
        assert rc == 1
        assert f"--out {out!r}" in line and "cannot create the folder" in line, line
        assert stdout == ""
    assert blocker.read_text() == "not a folder"


class _StderrReader:
    """Reads a child's stderr on a thread, so that waiting for a marker in it is bounded
    even when the child writes nothing."""

    def __init__(self, stream):
        self.chunks: list[str] = []
        self.stream = stream
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while chunk := self.stream.read(1):
            self.chunks.append(chunk)

    def text(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, marker: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if marker in self.text():
                return True
            if not self.thread.is_alive():
                return marker in self.text()
            time.sleep(0.05)
        return False


def test_ctrl_c_during_training_saves_the_model_and_exits_130(tmp_path):
    out = tmp_path / "run"
    # a SIGINT that is ignored when the test starts (a background job) is restored, so that
    # Python turns it into KeyboardInterrupt in the child as it does in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "densenn", "train", "--engine", "cpu", "--epochs", "2000",
                             "--layers", "32", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    reader = _StderrReader(proc.stderr)
    try:
        # tqdm's postfix names the epoch once one is done
        started = reader.wait_for("epoch=2/2000", 60)
        assert started, f"training did not get going within 60 s:\n{reader.text()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.thread.join(10)
    rest = reader.text()
    assert proc.returncode == 130, rest[-3000:]
    model_path = out / "model.dn"
    last = rest.strip().splitlines()[-1]
    assert last.startswith("densenn: interrupted") and str(model_path) in last, last
    assert "Traceback" not in rest
    block = load_extra(model_path)["cli"]
    stopped = block["stopped"]
    assert stopped["reason"] == "interrupted" and stopped["epochs_planned"] == 2000
    assert 2 <= stopped["epochs_completed"] < 2000
    assert f"after {stopped['epochs_completed']} of 2000 epochs" in last
    # the default checkpoint (OUT/train.ckpt) was written at the interruption: the line says how to go on
    assert last.endswith(f"; resume with: densenn train --resume {out / 'train.ckpt'}"), last
    assert stopped["checkpoint"] == str(out / "train.ckpt") and (out / "train.ckpt").is_file()
    assert (out / "training.png").read_bytes()[:8] == PNG_MAGIC
    net = dn.load(model_path, engine="cpu")
    assert net.n_in == 64 and net.n_out == 10
    rc, stdout, stderr = call("evaluate", str(model_path), "--engine", "cpu", "--json")
    assert rc == 0, stderr
    assert '"test_accuracy"' in stdout
    assert not [p for p in out.iterdir() if p.name.endswith(".densenn-tmp")]


def test_divergence_saves_the_weights_from_the_start_of_the_diverged_epoch(tmp_path):
    # plain SGD at rate 0.5 on linear hidden layers blows up within a few epochs on digits
    options = ["train", "--engine", "cpu", "--optimizer", "sgd", "--lr", "0.5", "--activation", "linear",
               "--seed", "0", "--no-progress"]
    out = tmp_path / "run"
    rc, stdout, stderr = call(*options, "--epochs", "20", "--out", str(out))
    assert rc == 1, stderr
    line = one_error_line(stderr)
    model_path = out / "model.dn"
    assert "in epoch " in line and str(model_path) in line, line
    epoch = int(line.split("in epoch ")[1].split()[0].rstrip(";:,"))
    stopped = load_extra(model_path)["cli"]["stopped"]
    assert stopped["reason"] == "diverged" and stopped["epochs_completed"] == epoch - 1
    saved = dn.load(model_path, engine="cpu").get_weights()
    assert all(np.isfinite(w).all() and np.isfinite(b).all() for w, b in saved)
    if epoch > 1:
        # the same run stopped by --epochs just before that epoch has the same weights
        assert (out / "training.png").read_bytes()[:8] == PNG_MAGIC
        rc, _, stderr = call(*options, "--epochs", str(epoch - 1), "--out", str(tmp_path / "short"))
        assert rc == 0, stderr
        for (w, b), (w2, b2) in zip(saved, dn.load(tmp_path / "short" / "model.dn").get_weights()):
            np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-6)
    else:
        assert not (out / "training.png").exists()


# =========================================================================================
# 2. predict reads its input carefully and writes exactly the file named
# =========================================================================================
def test_predict_csv_first_row_is_skipped_only_when_it_is_a_header(model, tmp_path):
    x = digits_rows(4)
    good = "\n".join(",".join(f"{v:g}" for v in row) for row in x)
    header = ",".join(f"pixel_{i}" for i in range(64))
    (tmp_path / "header.csv").write_text(header + "\n" + good + "\n")
    rc, stdout, stderr = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "header.csv"))
    assert rc == 0, stderr
    assert len(stdout.split()) == 4                       # the header skipped, all four rows predicted

    broken = good.split("\n")
    broken[0] = broken[0].replace(",", ",x", 1)           # one field of the first row is not a number
    path = tmp_path / "first-row-broken.csv"
    path.write_text("\n".join(broken) + "\n")
    rc, stdout, stderr = call("predict", model, "--engine", "cpu", "--input", str(path))
    line = one_error_line(stderr)
    assert rc == 1 and stdout == ""
    assert str(path) in line and "line 1" in line, line


@pytest.mark.parametrize("name,text,where", [
    ("ragged.csv", "0.5,0.25\n0.5\n", "line 2"),
    ("semicolons.csv", "0.5;0.25;0\n1;0;0\n", "line 1"),
])
def test_predict_malformed_csv_is_one_clear_error_line(model, tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    proc = run_cli("predict", model, "--input", str(path), timeout=120)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)                    # no NumPy warning, no "shape (0, 1)"
    assert str(path) in line and where in line and "comma-separated numbers" in line, line
    assert "(0, 1)" not in line
    assert proc.stdout == ""


def test_predict_output_is_exactly_the_file_named(model, tmp_path):
    np.save(tmp_path / "x.npy", digits_rows(5))
    target = tmp_path / "OUT.NPY"
    old = os.umask(0o027)
    try:
        rc, stdout, stderr = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "x.npy"),
                                  "--output", str(target))
    finally:
        os.umask(old)
    assert rc == 0, stderr
    assert str(target) in stdout
    assert not (tmp_path / "OUT.NPY.npy").exists()
    assert np.load(target).shape == (5,)
    assert (target.stat().st_mode & 0o777) == 0o640
    rc, _, stderr = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "x.npy"), "--proba",
                         "--output", str(tmp_path / "P.CSV"))
    assert rc == 0, stderr
    assert np.loadtxt(tmp_path / "P.CSV", delimiter=",").shape == (5, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT.NPY", "P.CSV", "x.npy"]


def test_predict_output_folder_is_checked_before_predicting(model, tmp_path):
    # an input of the wrong width would fail the prediction: the --output error must come first
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5)))
    outputs = [str(tmp_path / "missing" / "p.npy"), str(tmp_path)]
    if os.path.isdir(SYSFS_FOLDER):
        outputs.append(os.path.join(SYSFS_FOLDER, "p.npy"))
    for output in outputs:
        rc, stdout, stderr = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "wrong.npy"),
                                  "--output", output)
        line = one_error_line(stderr)
        assert rc == 1 and stdout == ""
        assert f"--output {output!r}" in line and "features" not in line, line


def test_predict_input_folder_is_called_a_folder(model, tmp_path):
    rc, _, stderr = call("predict", model, "--engine", "cpu", "--input", str(tmp_path))
    line = one_error_line(stderr)
    assert rc == 1
    assert "is a folder" in line and "does not exist" not in line, line


# =========================================================================================
# 3. the IDX reader is bounded by its header
# =========================================================================================
ZEROS_MB = 320


@pytest.fixture(scope="module")
def zeros_member() -> bytes:
    """A gzip member of ZEROS_MB MiB of zero bytes (about 1.4 MB compressed)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)      # wbits 31: the gzip container
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(ZEROS_MB)]
    return b"".join(parts) + packer.flush()


def idx_header(dims) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


def read_with_peak(path) -> tuple[BaseException, float, float]:
    """read_idx(path) that must fail: (the error, peak traced MiB, seconds)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DensennError) as info:
            ds.read_idx(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return info.value, peak, seconds


def test_idx_gzip_bomb_is_not_decompressed_beyond_its_header(tmp_path, zeros_member):
    # a valid header for 60000 28×28 images (47 MB), then 320 MiB of zeros: a 1.4 MB file
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((60000, 28, 28))) + zeros_member)
    assert path.stat().st_size < 4 * 2**20
    error, peak, seconds = read_with_peak(path)
    assert str(path) in str(error) and "too long" in str(error), error
    assert peak < 160, f"reading the bomb peaked at {peak:.0f} MiB of Python memory"
    assert seconds < 20


def test_idx_header_claiming_absurd_sizes_is_refused_before_reading(tmp_path, zeros_member):
    # 10^12 items: refused from the header alone, before any of the zeros are decompressed
    path = tmp_path / "huge-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header((10**4, 10**4, 10**4))) + zeros_member)
    error, peak, seconds = read_with_peak(path)
    assert str(path) in str(error) and "larger than" in str(error), error
    assert peak < 16 and seconds < 2
    # the same header as plain bytes
    with pytest.raises(DensennError, match="larger than"):
        ds.parse_idx(idx_header((10**4, 10**4, 10**4)) + bytes(64))


def test_idx_short_and_long_payloads_are_clear_errors(tmp_path):
    good = idx_header((3, 4)) + bytes(range(12))
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    np.testing.assert_array_equal(ds.read_idx(tmp_path / "ok.gz"), np.arange(12).reshape(3, 4))
    for name, data, what in (("short.gz", good[:-1], "truncated"), ("long.gz", good + b"\x00", "too long"),
                             ("long", good + b"\x00" * 5, "too long")):
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        with pytest.raises(DensennError, match=what) as info:
            ds.read_idx(path)
        assert str(path) in str(info.value)
