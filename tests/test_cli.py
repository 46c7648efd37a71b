"""The ``densenn`` command: train, evaluate, predict, info, bench, and its error messages.

Most tests call ``densenn.cli.main([...])`` in-process (fast); a few run
``python -m densenn ...`` as a subprocess, as a user would. The MNIST run is
marked slow and skips when ``../shared/data/mnist`` is absent.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import densenn as dn
from densenn.cli import main
from densenn.datasets import Standardizer, load_digits
from densenn.io import load_extra

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_KEYS = {"test_accuracy", "test_loss", "epochs", "seconds", "model_path", "plot_path", "engine", "dtype",
              "history", "architecture"}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m densenn args...`` with the default engine being the CPU."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DENSENN_ENGINE", None)
    return subprocess.run([sys.executable, "-m", "densenn", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def call(*args: str) -> tuple[int, str, str]:
    """main(args) in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, stderr: str):
    assert rc != 0
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("densenn: error: "), lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A quick digits run (5 epochs) with --json: (parsed JSON, output folder)."""
    out = tmp_path_factory.mktemp("run")
    rc, stdout, stderr = call("train", "--engine", "cpu", "--epochs", "5", "--json", "--no-progress", "--out", str(out))
    assert rc == 0, stderr
    return json.loads(stdout), out


# -- train ----------------------------------------------------------------------------------
def test_train_json_has_the_keys_and_writes_model_and_plot(trained):
    result, out = trained
    assert TRAIN_KEYS <= set(result)
    assert result["epochs"] == 5 and len(result["history"]["loss"]) == 5
    # no validation set unless asked for (never the test set): no val_* curves
    assert "val_accuracy" not in result["history"] and result["val_split"] is None and result["n_val"] == 0
    assert result["n_train"] == 1438 and result["n_test"] == 359
    assert 0.5 < result["test_accuracy"] <= 1.0 and result["test_loss"] > 0 and result["seconds"] > 0
    assert result["engine"] == "cpu" and result["dtype"] == "float32"
    arch = result["architecture"]
    assert arch["n_in"] == 64 and [l["units"] for l in arch["layers"]] == [256, 128, 10]
    assert arch["layers"][-1]["activation"] == "softmax"
    assert Path(result["model_path"]) == out / "model.dn" and (out / "model.dn").is_file()
    assert Path(result["plot_path"]) == out / "training.png"
    assert (out / "training.png").read_bytes()[:8] == PNG_MAGIC
    assert Path(result["checkpoint"]) == out / "train.ckpt" and (out / "train.ckpt").is_file()
    # the standardiser travels with the model
    extra = load_extra(out / "model.dn")["cli"]
    assert extra["data"]["name"] == "digits" and len(extra["standardizer"]["mean"]) == 64


def test_train_human_report(tmp_path):
    rc, stdout, _ = call("train", "--engine", "cpu", "--epochs", "2", "--layers", "32", "--no-progress",
                         "--optimizer", "momentum", "--schedule", "step", "--out", str(tmp_path))
    assert rc == 0
    assert "test accuracy" in stdout and "test loss" in stdout
    assert str(tmp_path / "model.dn") in stdout and str(tmp_path / "training.png") in stdout


def test_train_defaults_reach_97_percent_on_digits(tmp_path):
    """Plain `densenn train --json` as a user runs it: ≥97% on the digits test split; the progress
    bar goes to stderr and stdout holds exactly one JSON object."""
    start = time.perf_counter()
    proc = run_cli("train", "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["test_accuracy"] >= 0.97, result["test_accuracy"]
    assert result["epochs"] == 30
    assert "batch/s" in proc.stderr or "it/s" in proc.stderr or "%" in proc.stderr
    print(f"digits default: {result['test_accuracy']:.4f} in {result['seconds']:.1f} s of training, "
          f"{time.perf_counter() - start:.1f} s in all")


# -- evaluate -------------------------------------------------------------------------------
def test_evaluate_agrees_with_train(trained):
    result, out = trained
    rc, stdout, _ = call("evaluate", str(out / "model.dn"), "--engine", "cpu", "--json")
    assert rc == 0
    scores = json.loads(stdout)
    assert scores["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-12)
    assert scores["test_loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    counts = np.array(scores["confusion_matrix"])
    assert counts.shape == (10, 10) and counts.sum() == scores["n_samples"]
    assert np.trace(counts) / counts.sum() == pytest.approx(scores["test_accuracy"])

    rc, stdout, _ = call("evaluate", str(out / "model.dn"), "--engine", "cpu")
    assert rc == 0
    assert f"test accuracy {result['test_accuracy']:.4f}" in stdout
    assert "true\\pred" in stdout


def test_evaluate_a_model_saved_by_the_library(tmp_path):
    """No CLI block in the model: evaluate uses the digits loader's own standardisation."""
    data = load_digits()
    net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "softmax")], engine="cpu", seed=0)
    net.fit(data.x_train, data.y_train, epochs=3, progress=False)
    path = net.save(tmp_path / "plain.dn")
    rc, stdout, _ = call("evaluate", str(path), "--engine", "cpu", "--json")
    assert rc == 0
    assert json.loads(stdout)["test_accuracy"] == pytest.approx(net.evaluate(data.x_test, data.y_test)["accuracy"])


# -- predict --------------------------------------------------------------------------------
def test_predict_round_trip(trained, tmp_path):
    result, out = trained
    model = str(out / "model.dn")
    raw = load_digits(standardize=False)
    x = raw.x_test
    np.save(tmp_path / "x.npy", x)

    rc, stdout, _ = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "x.npy"),
                         "--output", str(tmp_path / "pred.npy"))
    assert rc == 0 and "pred.npy" in stdout
    pred = np.load(tmp_path / "pred.npy")
    assert pred.shape == (len(x),) and np.issubdtype(pred.dtype, np.integer)
    # the saved standardiser was applied: same classes as the library, same accuracy as train
    net = dn.load(model, engine="cpu")
    std = Standardizer.from_dict(load_extra(model)["cli"]["standardizer"])
    np.testing.assert_array_equal(pred, net.predict_classes(std.transform(x)))
    assert np.mean(pred == raw.y_test) == pytest.approx(result["test_accuracy"])

    # CSV in, probabilities out as CSV
    np.savetxt(tmp_path / "x.csv", x[:7], delimiter=",")
    rc, _, _ = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "x.csv"), "--proba",
                    "--output", str(tmp_path / "p.csv"))
    assert rc == 0
    proba = np.loadtxt(tmp_path / "p.csv", delimiter=",")
    assert proba.shape == (7, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), pred[:7])

    # printed, and as JSON
    rc, stdout, _ = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "x.csv"))
    assert rc == 0 and [int(v) for v in stdout.split()] == pred[:7].tolist()
    rc, stdout, _ = call("predict", model, "--engine", "cpu", "--input", str(tmp_path / "x.csv"), "--json")
    assert rc == 0 and json.loads(stdout)["predictions"] == pred[:7].tolist()


def test_predict_rejects_a_wrong_shape(trained, tmp_path):
    _, out = trained
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    rc, _, stderr = call("predict", str(out / "model.dn"), "--input", str(tmp_path / "bad.npy"))
    assert_one_line_error(rc, stderr)
    assert "64 features" in stderr
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    rc, _, stderr = call("predict", str(out / "model.dn"), "--input", str(tmp_path / "bad.csv"))
    assert_one_line_error(rc, stderr)
    rc, _, stderr = call("predict", str(out / "model.dn"), "--input", str(tmp_path / "missing.npy"))
    assert_one_line_error(rc, stderr)
    assert "does not exist" in stderr


# -- info and bench ---------------------------------------------------------------------------
def test_info_json():
    proc = run_cli("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["engines"]["cpu"]["available"] is True
    assert set(info["engines"]) == set(dn.backend.ENGINE_KINDS)
    for kind, state in info["engines"].items():
        assert state["available"] or state["reason"], kind
    for key in ("densenn", "python", "cpu_count", "blas", "threads", "opencl", "cuda"):
        assert key in info
    assert info["packages"]["numpy"] == np.__version__
    rc, stdout, _ = call("info")
    assert rc == 0 and "engine cpu" in stdout and "available" in stdout


def test_bench_small():
    rc, stdout, _ = call("bench", "--size", "200", "--repeat", "2", "--engine", "cpu", "--json")
    assert rc == 0
    result = json.loads(stdout)
    assert result["size"] == 200 and result["layers"] == [200, 100, 20, 10]
    for key in ("forward_ms", "step_ms", "gemm_ms", "overhead_ratio", "gflop_step"):
        assert result[key] > 0, key
    assert result["check_max_error"] < 1e-3
    rc, stdout, _ = call("bench", "--size", "100", "--repeat", "1", "--engine", "cpu")
    assert rc == 0 and "overhead ratio" in stdout


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["train", "--activation", "nonsense"],
    ["train", "--lr", "0"],
    ["train", "--batch-size", "0"],
    ["train", "--epochs", "-1"],
    ["train", "--layers", "12,x"],
    ["train", "--engine", "nonsense"],
    ["train", "--data", "mnist", "--data-dir", "/nonexistent/mnist"],
    ["evaluate", "/nonexistent/model.dn"],
    ["predict", "/nonexistent/model.dn", "--input", "x.npy"],
    ["bench", "--size", "5"],
    ["bench", "--engine", "nonsense", "--size", "40"],
    [],
], ids=lambda a: " ".join(a) or "no-command")
def test_bad_input_is_one_clear_line(args, tmp_path):
    rc, stdout, stderr = call(*args, *(["--out", str(tmp_path)] if args[:1] == ["train"] else []))
    assert_one_line_error(rc, stderr)
    assert rc in (1, 2)


def test_bad_input_as_a_subprocess(tmp_path):
    proc = run_cli("train", "--engine", "nonsense", "--out", str(tmp_path))
    assert_one_line_error(proc.returncode, proc.stderr)
    assert "unknown engine" in proc.stderr
    proc = run_cli("evaluate", str(tmp_path / "missing.dn"))
    assert_one_line_error(proc.returncode, proc.stderr)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    proc = run_cli("train", "--lr", "0")
    assert_one_line_error(proc.returncode, proc.stderr)
    assert proc.returncode == 2


# -- MNIST ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mnist_defaults_reach_98_percent(tmp_path):
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file() and not (MNIST_DIR / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST IDX files not found in {MNIST_DIR}")
    start = time.perf_counter()
    proc = run_cli("train", "--data", "mnist", "--data-dir", str(MNIST_DIR), "--json", "--no-progress",
                   "--out", str(tmp_path), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    print(f"MNIST with the defaults: test accuracy {result['test_accuracy']:.4f}, {result['epochs']} epochs, "
          f"{result['seconds']:.1f} s of training, {time.perf_counter() - start:.1f} s in all")
    assert result["test_accuracy"] >= 0.98
    assert [l["units"] for l in result["architecture"]["layers"]] == [256, 128, 10]
    # evaluate finds the data folder saved in the model
    proc = run_cli("evaluate", result["model_path"], "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-12)


# -- --dropout and --norm -----------------------------------------------------------------------
def _layer_types(path) -> list[str]:
    net = dn.load(path, engine="cpu")
    try:
        return [spec.type for spec in net.specs]
    finally:
        net.release()


def test_train_dropout_and_batch_norm_build_those_layers_and_evaluate_works(tmp_path):
    rc, stdout, stderr = call("train", "--engine", "cpu", "--layers", "16", "--dropout", "0.2", "--norm", "batch",
                              "--epochs", "2", "--json", "--no-progress", "--out", str(tmp_path))
    assert rc == 0, stderr
    result = json.loads(stdout)
    model = tmp_path / "model.dn"
    # the saved model holds the layers, types and settings included
    assert _layer_types(model) == ["dense", "batchnorm", "activation", "dropout", "dense"]
    net = dn.load(model, engine="cpu")
    assert isinstance(net.specs[0], dn.Dense) and net.specs[0].units == 16
    assert dn.get_activation(net.specs[0].activation).name == "linear"
    assert isinstance(net.specs[1], dn.BatchNorm)
    assert isinstance(net.specs[2], dn.ActivationLayer) and net.specs[2].activation.name == "relu"
    assert isinstance(net.specs[3], dn.Dropout) and net.specs[3].rate == pytest.approx(0.2)
    assert net.specs[4].units == 10 and dn.get_activation(net.specs[4].activation).name == "softmax"
    net.release()
    # the settings are reported and recorded
    assert result["norm"] == "batch" and result["dropout"] == pytest.approx(0.2)
    arch = result["architecture"]
    assert [layer["type"] for layer in arch["layers"]] == ["dense", "batchnorm", "activation", "dropout", "dense"]
    assert arch["layers"][3]["rate"] == pytest.approx(0.2)
    assert arch["params"] == (64 * 16 + 16) + 2 * 16 + (16 * 10 + 10)      # γ, β trained; running stats not
    assert "batchnorm" in arch["text"] and "dropout 0.2" in arch["text"]
    options = load_extra(model)["cli"]["train"]
    assert options["norm"] == "batch" and options["dropout"] == pytest.approx(0.2)
    # evaluate: inference mode (running statistics, no dropout) gives the scores train reported
    rc, stdout, stderr = call("evaluate", str(model), "--engine", "cpu", "--json")
    assert rc == 0, stderr
    scores = json.loads(stdout)
    assert 0.0 <= scores["test_accuracy"] <= 1.0
    assert scores["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-12)
    assert [layer["type"] for layer in scores["architecture"]["layers"]] == [layer["type"] for layer in arch["layers"]]
    rc, stdout, stderr = call("evaluate", str(model), "--engine", "cpu")
    assert rc == 0, stderr
    assert f"test accuracy {result['test_accuracy']:.4f}" in stdout and "batchnorm" in stdout
    # predict runs on it too
    np.save(tmp_path / "x.npy", load_digits(standardize=False).x_test[:5])
    rc, stdout, stderr = call("predict", str(model), "--engine", "cpu", "--input", str(tmp_path / "x.npy"))
    assert rc == 0, stderr
    assert len(stdout.split()) == 5


def test_train_layer_norm_and_dropout_after_every_hidden_layer(tmp_path):
    rc, stdout, stderr = call("train", "--engine", "cpu", "--layers", "16,8", "--norm", "layer", "--dropout", "0.1",
                              "--activation", "tanh", "--epochs", "1", "--json", "--no-progress", "--out",
                              str(tmp_path))
    assert rc == 0, stderr
    assert _layer_types(tmp_path / "model.dn") == ["dense", "layernorm", "activation", "dropout",
                                                   "dense", "layernorm", "activation", "dropout", "dense"]
    net = dn.load(tmp_path / "model.dn", engine="cpu")
    assert [s.activation.name for s in net.specs if isinstance(s, dn.ActivationLayer)] == ["tanh", "tanh"]
    net.release()
    assert json.loads(stdout)["norm"] == "layer"
    # --norm layer alone: no dropout layer
    rc, _, stderr = call("train", "--engine", "cpu", "--layers", "16", "--norm", "layer", "--epochs", "1",
                         "--no-progress", "--out", str(tmp_path))
    assert rc == 0, stderr
    assert _layer_types(tmp_path / "model.dn") == ["dense", "layernorm", "activation", "dense"]
    # --dropout alone: Dense layers as before, a Dropout after each hidden one
    rc, _, stderr = call("train", "--engine", "cpu", "--layers", "16,8", "--dropout", "0.5", "--epochs", "1",
                         "--no-progress", "--out", str(tmp_path))
    assert rc == 0, stderr
    assert _layer_types(tmp_path / "model.dn") == ["dense", "dropout", "dense", "dropout", "dense"]


@pytest.mark.parametrize("args, option", [
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--dropout", "abc"], "--dropout"),
    (["--dropout", "nan"], "--dropout"),
    (["--dropout", "1.5"], "--dropout"),
    (["--norm", "group"], "--norm"),
    (["--norm", ""], "--norm"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_bad_dropout_or_norm_is_one_line_naming_the_option(args, option, tmp_path):
    rc, stdout, stderr = call("train", "--engine", "cpu", "--epochs", "1", "--no-progress", *args,
                              "--out", str(tmp_path / "never"))
    assert_one_line_error(rc, stderr)
    assert rc == 2 and option in stderr
    assert not (tmp_path / "never").exists()            # rejected before anything is done


@pytest.mark.parametrize("batch_size", ["1", "3"])     # 1438 digits training samples: 1438 % 3 == 1
def test_batch_norm_with_a_batch_of_one_is_one_line(batch_size, tmp_path):
    rc, stdout, stderr = call("train", "--engine", "cpu", "--layers", "8", "--norm", "batch", "--batch-size",
                              batch_size, "--epochs", "1", "--no-progress", "--out", str(tmp_path))
    assert_one_line_error(rc, stderr)
    assert rc == 1 and "--batch-size" in stderr and "--norm batch" in stderr
    assert not (tmp_path / "model.dn").exists()
    # --norm layer has no such limit
    rc, _, stderr = call("train", "--engine", "cpu", "--layers", "8", "--norm", "layer", "--batch-size", "3",
                         "--epochs", "1", "--no-progress", "--out", str(tmp_path))
    assert rc == 0, stderr


def test_without_dropout_and_norm_the_architecture_is_unchanged(tmp_path):
    plain, explicit = tmp_path / "plain", tmp_path / "explicit"
    rc, stdout, stderr = call("train", "--engine", "cpu", "--layers", "16,8", "--epochs", "1", "--json",
                              "--no-progress", "--out", str(plain))
    assert rc == 0, stderr
    result = json.loads(stdout)
    assert _layer_types(plain / "model.dn") == ["dense", "dense", "dense"]
    arch = result["architecture"]
    assert arch["text"] == "64 → 16 relu → 8 relu → 10 softmax"
    assert [(la["units"], la["activation"]) for la in arch["layers"]] == [(16, "relu"), (8, "relu"), (10, "softmax")]
    assert arch["params"] == (64 * 16 + 16) + (16 * 8 + 8) + (8 * 10 + 10)
    assert result["norm"] == "none" and result["dropout"] == 0
    # --dropout 0 --norm none are the defaults: the same network, weight for weight
    rc, stdout, stderr = call("train", "--engine", "cpu", "--layers", "16,8", "--epochs", "1", "--json",
                              "--no-progress", "--dropout", "0", "--norm", "none", "--out", str(explicit))
    assert rc == 0, stderr
    assert json.loads(stdout)["architecture"] == arch
    a, b = dn.load(plain / "model.dn", engine="cpu"), dn.load(explicit / "model.dn", engine="cpu")
    assert a.config() == b.config()
    for (wa, ba), (wb, bb) in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)


def test_activation_choices_come_from_the_registry():
    from densenn.cli import build_parser
    from densenn.nn.activation import ACTIVATIONS, Activation

    class CliSquare(Activation):
        name = "cli_test_square"
        f = "z * z"
        df = "2 * z"

    assert CliSquare.name not in ACTIVATIONS
    dn.register_activation(CliSquare)
    try:
        args = build_parser().parse_args(["train", "--activation", "cli_test_square"])
        assert args.activation == "cli_test_square"
        for name in ACTIVATIONS:            # every registered activation is a choice
            assert build_parser().parse_args(["train", "--activation", name]).activation == name
    finally:
        del ACTIVATIONS[CliSquare.name]
    rc, _, stderr = call("train", "--activation", "cli_test_square")
    assert_one_line_error(rc, stderr)
    assert rc == 2 and "--activation" in stderr
