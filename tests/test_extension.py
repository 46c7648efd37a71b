"""The extension point: an activation and an optimizer written in user code, declared once,
run on every engine (the CPU's Numba and NumPy paths, and OpenCL where it is installed).

Neither touches densenn's files: the activation declares ``f`` and ``df``, the optimizer one
``Map``; the engines compile them like the built-in ones.
"""
from __future__ import annotations

import numpy as np
import pytest

import densenn as dn
from densenn.errors import DensennException
from densenn.kernels.ops import Map
from densenn.nn.activation import ACTIVATIONS, Activation, register_activation
from densenn.optim import _REGISTERED, OPTIMIZERS, Optimizer, register_optimizer


class Swish(Activation):
    """f(z) = z·σ(z), declared only by its two expressions: no NumPy kernels of its own."""

    name = "test_swish"
    f = "z * (0.5 * tanh(0.5 * z) + 0.5)"
    df = "(0.5 * tanh(0.5 * z) + 0.5) * (1 + z * (1 - (0.5 * tanh(0.5 * z) + 0.5)))"


#: sign SGD (signSGD, Bernstein et al. 2018): w -= lr · sign(g)
SIGN_UPDATE = Map("test_sign_sgd", "w g", writes="w", scalars="lr",
                  body="w = w - lr * (1 if g > 0 else (-1 if g < 0 else 0))")


class SignSGD(Optimizer):
    name = "test_sign_sgd"

    def _update(self, i, p, g, lr, weight_decay):
        self.engine.map(SIGN_UPDATE, (p, g), (lr,))

    def config(self):
        return {"name": self.name, "lr": self.lr}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """Swish and sign SGD known by name for each test here, and forgotten after it (the other
    test modules go over every registered activation with references of their own)."""
    monkeypatch.setitem(ACTIVATIONS, Swish.name, Swish)
    monkeypatch.setitem(OPTIMIZERS, SignSGD.name, SignSGD)
    monkeypatch.setitem(_REGISTERED, SignSGD.name, SignSGD)
    assert register_activation(Swish) is Swish and register_optimizer(SignSGD) is SignSGD


def _engines():
    out = ["cpu", "cpu:numpy"]
    try:
        dn.get_engine("opencl")
        out.append("opencl")
    except DensennException:
        pass
    return out


def _data():
    r = np.random.default_rng(0)
    x = r.normal(size=(200, 6))
    return x, (x[:, 0] * x[:, 1] > 0).astype(int)


def _swish(z):
    return z / (1 + np.exp(-z))


@pytest.mark.parametrize("engine", ["cpu", "cpu:numpy", "opencl"])
def test_a_user_activation_and_optimizer_train_on_every_engine(engine):
    if engine not in _engines():
        pytest.skip("engine 'opencl' unavailable here (PyOpenCL, pyclblast or an OpenCL device missing)")
    x, y = _data()
    runs = {}
    for name in ("cpu:numpy", engine):
        net = dn.Network(6, [dn.Dense(8, "test_swish"), dn.Dense(2, "softmax")], engine=name, dtype="float64",
                         seed=3)
        w0 = net.get_weights()
        h = net.fit(x, y, epochs=3, batch_size=20, optimizer=SignSGD(1e-3), progress=False)
        runs[name] = (w0, net.get_weights(), h["loss"])
    (w0, w_ref, loss_ref), (_, w, loss) = runs["cpu:numpy"], runs[engine]
    # sign SGD moves a weight by exactly ±lr per step (0 where its gradient is 0): after 30
    # steps, an even number of lr (30 ± 2k), at most 30
    steps = np.abs(w_ref[0][0] - w0[0][0]) / 1e-3
    np.testing.assert_allclose(steps, 2 * np.round(steps / 2), atol=1e-6)
    assert steps.max() <= 30 + 1e-6 and (steps > 0).mean() > 0.5
    for (wa, ba), (wb, bb) in zip(w_ref, w):
        np.testing.assert_allclose(wa, wb, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ba, bb, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-9)


@pytest.mark.parametrize("engine", ["cpu", "cpu:numpy", "opencl"])
def test_a_user_activation_computes_its_value_and_derivative(engine):
    if engine not in _engines():
        pytest.skip("engine 'opencl' unavailable here (PyOpenCL, pyclblast or an OpenCL device missing)")
    e = dn.get_engine(engine)
    z0 = np.linspace(-6, 6, 24).reshape(4, 6)
    act = dn.get_activation("test_swish")
    a = e.empty(z0.shape, "float64")
    act.activ(e, e.to_engine(z0), a)
    np.testing.assert_allclose(e.to_host(a), _swish(z0), rtol=1e-12)
    z = e.to_engine(z0.copy())
    act.prime(e, z)
    h = 1e-6
    numeric = (_swish(z0 + h) - _swish(z0 - h)) / (2 * h)
    np.testing.assert_allclose(e.to_host(z), numeric, rtol=1e-6, atol=1e-9)


def test_a_user_activation_is_saved_and_loaded_by_name(tmp_path):
    x, y = _data()
    net = dn.Network(6, [dn.Dense(8, "test_swish"), dn.Dense(2, "softmax")], seed=1)
    net.fit(x, y, epochs=1, progress=False)
    back = dn.load(net.save(tmp_path / "swish.dn"))
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    assert dn.get_optimizer("test_sign_sgd", lr=0.5).lr == 0.5


def test_a_bad_declaration_says_what_is_wrong():
    with pytest.raises(dn.DensennError, match="name 'q' is neither an argument"):
        Map("test_bad", "w", writes="w", body="w = q * w")
    with pytest.raises(dn.DensennError, match="Pow is not allowed"):
        Map("test_bad", "w", writes="w", body="w = w ** 2")
    with pytest.raises(dn.DensennError, match="unknown function"):
        Map("test_bad", "w", writes="w", body="w = cosh(w)")
    with pytest.raises(dn.DensennError, match="writes 'v'"):
        Map("test_bad", "w", writes="v", body="w = w")
