"""``densenn train``'s workflow: a validation split of the training data (the test set is
only for the final report), early stopping, checkpoints, ``--resume`` and Ctrl-C.

Small digits runs (a hidden layer of 16 or 32, a few epochs), mostly in-process through
``densenn.cli.main``; the Ctrl-C test runs ``python -m densenn train`` as a user would.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import signal
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
from densenn.training import checkpoint as ckpt
from densenn.training.split import validation_split

REPO = Path(__file__).resolve().parent.parent
SMALL = ("train", "--engine", "cpu", "--layers", "32", "--no-progress")


def call(*args: str) -> tuple[int, str, str]:
    """main(args) in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def train_json(*args: str) -> dict:
    rc, stdout, stderr = call(*args, "--json")
    assert rc == 0, stderr
    return json.loads(stdout)


def one_error_line(rc: int, stderr: str) -> str:
    assert rc != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("densenn: error: "), stderr
    return lines[0]


def weights(path) -> list:
    return dn.load(path, engine="cpu").get_weights()


def same_weights(a, b) -> bool:
    return len(a) == len(b) and all(p.tobytes() == q.tobytes() for la, lb in zip(a, b) for p, q in zip(la, lb))


def digits_split(fraction: float, seed: int = 0):
    """The CLI's digits training data cut as fit cuts it: (x, y, train_rows, val_rows)."""
    data = load_digits(standardize=False)
    train_rows, val_rows = validation_split(fraction, len(data.y_train), data.y_train, seed)
    return data.x_train, data.y_train, train_rows, val_rows


# -- the validation split ---------------------------------------------------------------------
def test_validation_is_a_split_of_the_training_data_and_the_test_set_only_reports(tmp_path):
    result = train_json(*SMALL, "--epochs", "2", "--val-split", "0.2", "--out", str(tmp_path))
    x, y, train_rows, val_rows = digits_split(0.2)
    assert (result["val_split"], result["n_val"], result["n_train"]) == (0.2, len(val_rows), len(train_rows))
    assert len(val_rows) == 288 and result["n_test"] == 359
    assert len(result["history"]["val_loss"]) == 2
    block = load_extra(tmp_path / "model.dn")["cli"]
    assert block["validation"] == {"split": 0.2, "n_samples": 288} and block["train"]["val_split"] == 0.2
    # the standardiser saw only the rows trained on: neither the validation rows nor the test set
    standardizer = Standardizer.from_dict(block["standardizer"])
    np.testing.assert_allclose(standardizer.mean, x[train_rows].mean(axis=0, dtype=np.float64), rtol=1e-12)
    # the epoch's validation loss is the saved network's loss on exactly those held-out rows
    net = dn.load(tmp_path / "model.dn", engine="cpu")
    val = net.evaluate(standardizer.transform(x[val_rows]), y[val_rows])
    assert val["loss"] == pytest.approx(result["history"]["val_loss"][-1], rel=1e-5)
    assert val["accuracy"] == pytest.approx(result["history"]["val_accuracy"][-1])
    assert result["test_loss"] != pytest.approx(result["val_loss"], rel=1e-3)


def test_without_val_split_or_early_stopping_there_is_no_validation_set(tmp_path):
    result = train_json(*SMALL, "--epochs", "1", "--out", str(tmp_path))
    assert result["val_split"] is None and result["n_val"] == 0 and result["early_stopping"] is None
    assert "val_loss" not in result["history"] and result["test_loss"] is not None
    assert load_extra(tmp_path / "model.dn")["cli"]["validation"] is None


# -- early stopping ---------------------------------------------------------------------------
def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path):
    # Adam at 0.05 overfits the digits within a few epochs: the validation loss turns up
    result = train_json(*SMALL, "--epochs", "60", "--lr", "0.05", "--early-stopping", "1", "--out", str(tmp_path))
    assert result["val_split"] == 0.1 and result["n_val"] == 144       # the default with --early-stopping
    done = result["epochs"]
    note = result["early_stopping"]
    assert done < 60 and note["patience"] == 1 and note["stopped_epoch"] == done
    val_loss = result["history"]["val_loss"]
    assert note["best_epoch"] == int(np.argmin(val_loss)) + 1 < done
    assert note["best_val_loss"] == pytest.approx(min(val_loss))
    block = load_extra(tmp_path / "model.dn")["cli"]
    assert block["early_stopping"] == note and block["train"]["early_stopping"] == 1
    # the saved network is the best epoch's, not the last one's
    x, y, _, val_rows = digits_split(0.1)
    net = dn.load(tmp_path / "model.dn", engine="cpu")
    loss = net.evaluate(Standardizer.from_dict(block["standardizer"]).transform(x[val_rows]), y[val_rows])["loss"]
    assert loss == pytest.approx(min(val_loss), rel=1e-5) and loss != pytest.approx(val_loss[-1], rel=1e-5)
    rc, stdout, _ = call(*SMALL, "--epochs", "60", "--lr", "0.05", "--early-stopping", "1",
                         "--out", str(tmp_path / "human"))
    assert rc == 0 and f"stopped after epoch {done}; kept the weights of epoch {note['best_epoch']}" in stdout


# -- resume -----------------------------------------------------------------------------------
def test_a_resumed_run_ends_with_the_weights_of_one_never_stopped(tmp_path):
    options = (*SMALL, "--dropout", "0.1", "--val-split", "0.2", "--early-stopping", "10")
    first = train_json(*options, "--epochs", "2", "--out", str(tmp_path / "first"))
    assert first["epochs"] == 2
    resumed = train_json("train", "--resume", str(tmp_path / "first" / "train.ckpt"), "--epochs", "4",
                         "--no-progress", "--out", str(tmp_path / "resumed"))
    whole = train_json(*options, "--epochs", "4", "--out", str(tmp_path / "whole"))
    assert resumed["epochs"] == whole["epochs"] == 4
    assert same_weights(weights(tmp_path / "resumed" / "model.dn"), weights(tmp_path / "whole" / "model.dn"))
    assert resumed["history"]["loss"] == whole["history"]["loss"]
    assert resumed["history"]["val_loss"] == whole["history"]["val_loss"]
    assert resumed["test_loss"] == whole["test_loss"] and resumed["early_stopping"] == whole["early_stopping"]
    block = load_extra(tmp_path / "resumed" / "model.dn")["cli"]
    assert block["resumed_from"] == str(tmp_path / "first" / "train.ckpt")
    assert block["train"]["epochs"] == 4 and block["train"]["dropout"] == 0.1
    # the resumed run went on writing the checkpoint it came from
    assert ckpt.read(tmp_path / "first" / "train.ckpt").training["epoch"] == 4


def test_ctrl_c_writes_a_checkpoint_says_how_to_resume_and_the_resume_matches(tmp_path):
    out = tmp_path / "run"
    checkpoint = out / "train.ckpt"
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DENSENN_ENGINE", None)
    # SIGINT restored to its default in the child (a background test run may ignore it), so
    # that it reaches Python as a Ctrl-C in a terminal does
    proc = subprocess.Popen([sys.executable, "-m", "densenn", *SMALL, "--epochs", "2000",
                             "--checkpoint-every", "7", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 90
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "no checkpoint within 90 s"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("densenn: interrupted after ") and str(out / "model.dn") in last, last
    assert last.endswith(f"resume with: densenn train --resume {checkpoint}"), last
    state = ckpt.read(checkpoint).training
    assert state["epoch"] < 2000 and state["global_step"] > 0
    stopped = load_extra(out / "model.dn")["cli"]["stopped"]
    assert stopped["reason"] == "interrupted" and stopped["checkpoint"] == str(checkpoint)
    assert stopped["epochs_completed"] == state["epoch"]
    # resumed to a few epochs past the interruption: the weights of a run never interrupted
    epochs = str(state["epoch"] + 2)
    rc, _, err = call("train", "--resume", str(checkpoint), "--epochs", epochs, "--no-progress",
                      "--out", str(tmp_path / "resumed"))
    assert rc == 0, err
    rc, _, err = call(*SMALL, "--epochs", epochs, "--checkpoint-every", "7", "--out", str(tmp_path / "whole"))
    assert rc == 0, err
    assert same_weights(weights(tmp_path / "resumed" / "model.dn"), weights(tmp_path / "whole" / "model.dn"))


def test_checkpoint_none_writes_none_and_says_so_on_ctrl_c(tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(dn.Network, "fit", interrupted)
    rc, _, stderr = call(*SMALL, "--epochs", "1", "--checkpoint", "none", "--out", str(tmp_path))
    assert rc == 130 and "no checkpoint was written, so it cannot be resumed" in stderr.splitlines()[-1]
    assert (tmp_path / "model.dn").is_file() and not (tmp_path / "train.ckpt").exists()
    assert load_extra(tmp_path / "model.dn")["cli"]["checkpoint"] is None


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, option, status", [
    (["--val-split", "0"], "--val-split", 2),
    (["--val-split", "1"], "--val-split", 2),
    (["--val-split", "-0.1"], "--val-split", 2),
    (["--val-split", "half"], "--val-split", 2),
    (["--val-split", "0.0001"], "--val-split", 1),          # rounds to no validation sample
    (["--val-split", "0.9999"], "--val-split", 1),          # ... or to no training sample
    (["--early-stopping", "-1"], "--early-stopping", 2),
    (["--checkpoint-every", "0"], "--checkpoint-every", 2),
    (["--checkpoint", "none", "--checkpoint-every", "5"], "--checkpoint-every", 1),
], ids=lambda a: " ".join(a) if isinstance(a, list) else str(a))
def test_bad_workflow_options_are_one_line_naming_the_option(args, option, status, tmp_path):
    rc, _, stderr = call(*SMALL, "--epochs", "1", *args, "--out", str(tmp_path))
    assert rc == status and option in one_error_line(rc, stderr)
    assert not (tmp_path / "model.dn").exists()


def test_a_checkpoint_path_that_is_a_folder_or_the_model_is_refused(tmp_path):
    rc, _, stderr = call(*SMALL, "--epochs", "1", "--checkpoint", str(tmp_path), "--out", str(tmp_path))
    assert "--checkpoint" in one_error_line(rc, stderr) and "is a folder" in stderr
    rc, _, stderr = call(*SMALL, "--epochs", "1", "--checkpoint", str(tmp_path / "model.dn"), "--out", str(tmp_path))
    assert "--checkpoint" in one_error_line(rc, stderr) and "model file" in stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A two-epoch digits run (16 hidden units); its folder, with train.ckpt and model.dn."""
    out = tmp_path_factory.mktemp("run")
    rc, _, stderr = call("train", "--engine", "cpu", "--epochs", "2", "--layers", "16", "--no-progress",
                         "--out", str(out))
    assert rc == 0, stderr
    return out


@pytest.mark.parametrize("args, words", [
    (["--layers", "64"], ["--layers 64", "--layers 16"]),
    (["--optimizer", "sgd"], ["--optimizer sgd", "--optimizer adam"]),
    (["--seed", "3"], ["--seed 3", "--seed 0"]),
    (["--data", "mnist"], ["--data mnist", "--data digits"]),
    (["--no-standardize"], ["--no-standardize", "--standardize"]),
    (["--early-stopping", "3"], ["--early-stopping 3", "no --early-stopping"]),
    (["--val-split", "0.2"], ["--val-split 0.2", "no --val-split"]),
    (["--epochs", "3", "--checkpoint", "none"], ["--checkpoint none", "--resume"]),
    (["--epochs", "1"], ["--epochs 1", "2 epochs done", "--epochs 2 or more"]),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_resume_refuses_options_that_differ_from_the_checkpoint(run, args, words, tmp_path):
    rc, _, stderr = call("train", "--resume", str(run / "train.ckpt"), *args, "--out", str(tmp_path))
    line = one_error_line(rc, stderr)
    assert all(w in line for w in words), line
    assert not (tmp_path / "model.dn").exists()


def test_resume_takes_options_equal_to_the_stored_ones_and_writes_where_asked(run, tmp_path):
    rc, stdout, stderr = call("train", "--resume", str(run / "train.ckpt"), "--layers", "16", "--seed", "0",
                              "--optimizer", "adam", "--standardize", "--epochs", "3", "--no-progress",
                              "--checkpoint", str(tmp_path / "more.ckpt"), "--out", str(tmp_path))
    assert rc == 0, stderr
    assert "resuming" in stdout and "after 2 epochs" in stdout
    assert ckpt.read(tmp_path / "more.ckpt").training["epoch"] == 3
    assert ckpt.read(run / "train.ckpt").training["epoch"] == 2          # left as it was
    assert load_extra(tmp_path / "model.dn")["cli"]["train"]["epochs"] == 3


def test_resume_refuses_a_broken_file_naming_the_option(run, tmp_path):
    raw = (run / "train.ckpt").read_bytes()
    cases = {"truncated.ckpt": raw[: len(raw) // 2], "flipped.ckpt": raw[:-1] + bytes([raw[-1] ^ 1]), "empty.ckpt": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        rc, _, stderr = call("train", "--resume", str(tmp_path / name), "--out", str(tmp_path / "out"))
        line = one_error_line(rc, stderr)
        assert rc == 1 and line.startswith("densenn: error: --resume: ") and name in line, line
    rc, _, stderr = call("train", "--resume", str(run / "model.dn"), "--out", str(tmp_path / "out"))
    assert "not a checkpoint" in one_error_line(rc, stderr)
    rc, _, stderr = call("train", "--resume", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "out"))
    assert "does not exist" in one_error_line(rc, stderr)
    assert not (tmp_path / "out" / "model.dn").exists()


def _forged(run: Path, path: Path, extra: dict, x, y) -> str:
    """A checkpoint of the run's network trained by the library on (x, y), with ``extra``."""
    net = dn.load(run / "model.dn", engine="cpu")
    net.fit(x, y, epochs=1, batch_size=32, checkpoint=str(path), extra=extra, progress=False,
            optimizer=dn.Adam(1e-3, weight_decay=1e-3))
    return str(path)


def test_resume_refuses_a_checkpoint_of_other_data(run, tmp_path):
    extra = ckpt.read(run / "train.ckpt").training["extra"]
    data = load_digits(standardize=False)
    x = Standardizer.from_dict(extra["cli"]["standardizer"]).transform(data.x_train)
    # the control: the CLI's own data, forged the same way, resumes
    good = _forged(run, tmp_path / "good.ckpt", extra, x, data.y_train)
    rc, _, stderr = call("train", "--resume", good, "--epochs", "3", "--no-progress", "--out", str(tmp_path / "g"))
    assert rc == 0, stderr
    # other rows; then the same rows but a stored option edited (no standardisation)
    other = _forged(run, tmp_path / "other.ckpt", extra, x[::-1].copy(), data.y_train[::-1].copy())
    edited = copy.deepcopy(extra)
    edited["cli"]["train"]["standardize"], edited["cli"]["standardizer"] = False, None
    edited_path = _forged(run, tmp_path / "edited.ckpt", edited, x, data.y_train)
    for path in (other, edited_path):
        rc, _, stderr = call("train", "--resume", path, "--epochs", "3", "--no-progress",
                             "--out", str(tmp_path / "o"))
        line = one_error_line(rc, stderr)
        assert rc == 1 and "other data" in line and os.path.basename(path) in line, line


def test_resume_refuses_a_checkpoint_not_written_by_the_command(run, tmp_path):
    data = load_digits()
    path = _forged(run, tmp_path / "library.ckpt", None, data.x_train, data.y_train)
    rc, _, stderr = call("train", "--resume", path, "--out", str(tmp_path / "o"))
    line = one_error_line(rc, stderr)
    assert "not written by 'densenn train'" in line and "densenn.resume" in line, line


def test_clipnorm_reaches_the_optimizer_and_a_resume_keeps_it(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--clipnorm", "0.5", "--out", str(out), "--no-progress"]) == 0
    assert ckpt.read(str(out / "train.ckpt")).training["optimizer"]["config"]["clipnorm"] == 0.5
    assert main(["train", "--clipnorm", "0", "--out", str(out)]) == 2
    # a resume keeps the options that decide the weights: another clipnorm is refused
    assert main(["train", "--resume", str(out / "train.ckpt"), "--clipnorm", "2", "--no-progress"]) == 1


def test_save_best_keeps_the_best_epochs_model_chosen_on_the_validation_split(tmp_path):
    result = train_json(*SMALL, "--epochs", "4", "--save-best", "--out", str(tmp_path))
    assert result["val_split"] == 0.1       # --save-best validates on the training data, not the test set
    val_loss = result["history"]["val_loss"]
    x, y, _, val_rows = digits_split(0.1)
    standardizer = Standardizer.from_dict(load_extra(tmp_path / "model.dn")["cli"]["standardizer"])
    best = dn.load(tmp_path / "best.dn", engine="cpu")
    got = best.evaluate(standardizer.transform(x[val_rows]), y[val_rows])["loss"]
    assert got == pytest.approx(min(val_loss), rel=1e-5)
