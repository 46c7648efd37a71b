"""The examples in ``examples/`` run, exit 0, and print what they are meant to show.

Each runs as a subprocess (as a reader would run it), with small sizes so the
whole module takes well under a minute on 2 cores.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 60) -> str:
    """Run examples/<name> with args; assert exit code 0; return its stdout."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DENSENN_ENGINE", None)        # the examples' --engine default is what is tested
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{name} {' '.join(args)} exited {proc.returncode}\n" \
                                 f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_example_is_tested_and_listed():
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert scripts == ["01_inference_layer.py", "02_training_layer.py", "03_activation_and_derivative.py",
                       "04_backward.py", "05_micro_benchmark.py", "06_fit_digits.py"]
    readme = (EXAMPLES / "README.md").read_text()
    for name in scripts:
        assert name in readme, f"{name} is missing from examples/README.md"


@pytest.mark.parametrize("engine", ["cpu", "cpu:numpy"])
def test_01_inference_layer_gives_the_seeds_output(engine):
    out = run_example("01_inference_layer.py", "--engine", engine)
    assert "output: 0.4352126 0.4352126" in out
    assert "rounded: [0.44, 0.44]" in out
    assert "with +b instead of −b" in out


def test_01_reports_an_unavailable_engine_cleanly():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "01_inference_layer.py"), "--engine", "nonsense"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "not available" in proc.stderr and "Traceback" not in proc.stderr


def test_02_training_layer_shares_buffers():
    out = run_example("02_training_layer.py", "--size", "3")
    assert "t2.x and t1.a (layer 2's input IS layer 1's output): np.shares_memory -> True" in out
    assert "t1.w and layer1.w: np.shares_memory -> True" in out
    assert "t1.z and t1.a are different buffers: np.shares_memory -> False" in out
    assert "t2.a, the network's output: [0.4352126 0.4352126 0.4352126]" in out
    assert "rounded [0.44, 0.44, 0.44]" in out


def test_03_activation_table_and_derivatives():
    out = run_example("03_activation_and_derivative.py")
    # the seed's table, rounded to two decimals
    assert "[[0.35 0.55 0.67]\n [0.5  0.62 0.73]]" in out
    assert "[[0.23 0.25 0.22]\n [0.25 0.24 0.2 ]]" in out
    assert "activ kept z: True | prime overwrote z with σ'(z): True" in out
    for name in ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "linear", "softmax"):
        assert re.search(rf"^{name}\s+f\(z\)", out, re.M), name
    assert re.search(r"^elu .*\n.*\n\s+working memory for batch 4: \(4, 3\)", out, re.M)
    assert re.search(r"^softmax .*\n.*\n\s+working memory for batch 4: \(4, 1\)", out, re.M)
    assert "largest derivative error over all activations" in out and "(ok:" in out


def test_04_backward_matches_finite_differences_and_trains():
    out = run_example("04_backward.py", "--steps", "10")
    assert "DenseTraining.backward() gives the very same numbers: True" in out
    rel = float(re.search(r"check_gradients \(finite differences\): max relative error (\S+)", out).group(1))
    assert rel < 1e-6
    assert "(decreased at every step)" in out


def test_05_micro_benchmark_small():
    out = run_example("05_micro_benchmark.py", "--size", "200", "--repeats", "2")
    assert "x 200×200 (batch 200), 200→100 tanh → 20 sigmoid → 10 sigmoid" in out
    assert re.search(r"check: forward output vs float64 NumPy, max \|difference\| \S+ \(ok\)", out)
    for row in ("forward", r"full step \(forward \+ backward\)", "the step's GEMMs alone"):
        assert re.search(rf"^{row}\s+[\d.]+\s+[\d.]+$", out, re.M), row


def test_06_fit_digits_reaches_97_percent(tmp_path):
    out = run_example("06_fit_digits.py", "--out", str(tmp_path))
    acc = float(re.search(r"test accuracy (\S+)", out).group(1))
    assert acc >= 0.97, out
    assert "true\\pred" in out
    assert "the loaded network predicts exactly the same outputs: True" in out
    png, model = tmp_path / "digits.png", tmp_path / "digits.dn"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert model.stat().st_size > 0
