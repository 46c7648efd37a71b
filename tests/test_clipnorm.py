"""Gradient clipping by the global norm (``clipnorm=`` of every optimizer), and the ``scalar``
array role it runs on, on every engine the contract suite covers (the ``engine`` fixture of
conftest.py; unavailable engines are skipped with the reason).

The reference clips each step's gradients g (all parameters together, before weight decay)
by f = clipnorm/‖g‖₂ when ‖g‖₂ > clipnorm, then runs the optimizer's own reference update
(those of test_optimizer.py, PyTorch's formulas) on the clipped gradients.
"""
from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import test_memory as memory
from test_optimizer import DECAYS, ref_adam, ref_sgd

import densenn as dn
from densenn.backend.cpu import CPUEngine
from densenn.backend.cpu.fused import AVAILABLE as NUMBA
from densenn.errors import DensennError
from densenn.kernels.ops import Map, Sum
from densenn.optim import Optimizer, adam_update

SHAPES = [(4, 3), (4,), (2, 4), (2,)]     # w, b, w, b of a two-layer network
#: per step, how far the gradients are scaled: their norms range over 25×
SCALES = [0.2, 1.0, 5.0, 0.5, 3.0]
TOL = {np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-6}, np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-13}}

#: kind -> (the optimizer with a clipnorm, its reference on already clipped gradients)
KINDS = {
    "sgd": (lambda c: dn.SGD(0.1, clipnorm=c), lambda p, g: ref_sgd(p, g, 0.1)),
    "sgd_wd": (lambda c: dn.SGD(0.1, weight_decay=0.05, clipnorm=c),
               lambda p, g: ref_sgd(p, g, 0.1, weight_decay=0.05)),
    "momentum": (lambda c: dn.SGD(0.05, momentum=0.9, weight_decay=0.01, clipnorm=c),
                 lambda p, g: ref_sgd(p, g, 0.05, momentum=0.9, weight_decay=0.01)),
    "nesterov": (lambda c: dn.SGD(0.05, momentum=0.8, nesterov=True, weight_decay=0.02, clipnorm=c),
                 lambda p, g: ref_sgd(p, g, 0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    "adam": (lambda c: dn.Adam(1e-2, weight_decay=0.1, clipnorm=c),
             lambda p, g: ref_adam(p, g, 1e-2, weight_decay=0.1)),
    "adamw": (lambda c: dn.AdamW(1e-2, weight_decay=0.1, clipnorm=c),
              lambda p, g: ref_adam(p, g, 1e-2, weight_decay=0.1, decoupled=True)),
}


@pytest.fixture(params=["float32", "float64"])
def dtype(request, engine):
    dt = np.dtype(request.param)
    if not engine.supports(dt):
        pytest.skip(f"engine {engine.name!r} does not support {dt} on this device")
    return dt


def to_dev(engine, values, dtype):
    return engine.to_engine(np.array(values, dtype=dtype, copy=True))


def problem(dtype, seed=0):
    """Parameters and per-step gradients, rounded to ``dtype`` (the reference starts from the same numbers)."""
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s).astype(dtype).astype(np.float64) for s in SHAPES]
    grads = [[(k * rng.normal(size=s)).astype(dtype).astype(np.float64) for s in SHAPES] for k in SCALES]
    return params, grads


def norms(grads) -> list[float]:
    return [math.sqrt(sum(float(np.sum(g * g)) for g in gs)) for gs in grads]


def clipped(grads, clipnorm):
    """The reference: each step's gradients scaled by clipnorm/‖g‖ where ‖g‖ exceeds clipnorm."""
    return [[g * (clipnorm / n if n > clipnorm else 1.0) for g in gs] for gs, n in zip(grads, norms(grads))]


def run(engine, opt, dtype, params, grads):
    """One optimizer step per entry of grads on engine copies of params; float64 host copies back."""
    ps = [to_dev(engine, p, dtype) for p in params]
    opt.bind(engine, ps, dtype)
    for gs in grads:
        opt.step(ps, [to_dev(engine, g, dtype) for g in gs], DECAYS)     # step overwrites the gradients
    return [engine.to_host(p).astype(np.float64) for p in ps]


def close(got, expected, dtype):
    for g, x in zip(got, expected):
        np.testing.assert_allclose(g, x, **TOL[np.dtype(dtype)])


# -- every optimizer against the reference --------------------------------------------------------
@pytest.mark.parametrize("where", ["above", "mixed", "below"])
@pytest.mark.parametrize("kind", KINDS)
def test_clipping_matches_the_reference(engine, dtype, kind, where):
    params, grads = problem(dtype)
    ns = norms(grads)
    # above: every step clipped; mixed: some; below: none (the clipping kernels still run)
    clipnorm = {"above": 0.5 * min(ns), "mixed": float(np.median(ns)), "below": 2.0 * max(ns)}[where]
    make, reference = KINDS[kind]
    opt = make(clipnorm)
    assert opt.last_grad_norm() is None
    got = run(engine, opt, dtype, params, grads)
    close(got, reference(params, clipped(grads, clipnorm)), dtype)
    np.testing.assert_allclose(opt.last_grad_norm(), ns[-1], rtol=TOL[dtype]["rtol"])
    if where != "below":     # clipping changed the result
        unclipped = reference(params, grads)
        assert not all(np.allclose(g, u, **TOL[dtype]) for g, u in zip(got, unclipped))


@pytest.mark.parametrize("kind", KINDS)
def test_a_clipnorm_never_reached_changes_no_bit(engine, dtype, kind):
    params, grads = problem(dtype, seed=1)
    make, _ = KINDS[kind]
    plain = run(engine, make(None), dtype, params, grads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # 1e300 is beyond float32: passed as its largest number
        for clipnorm in (1e30, 1e300):
            got = run(engine, make(clipnorm), dtype, params, grads)
            for g, p in zip(got, plain):
                np.testing.assert_array_equal(g, p)


@pytest.mark.filterwarnings("ignore:overflow encountered in dot:RuntimeWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_norm_makes_the_step_nan_not_zero(engine, dtype, kind):
    """An infinite gradient, or finite ones whose Σ g² overflows: NaN weights for fit's
    divergence guard, not a step scaled to nothing."""
    params, _ = problem(dtype)
    big = 1e20 if dtype == np.float32 else 1e160
    for grads in ([[np.full(s, big) for s in SHAPES]], [[np.full(s, np.inf if i == 1 else 0.1)
                                                         for i, s in enumerate(SHAPES)]]):
        opt = KINDS[kind][0](1.0)
        got = run(engine, opt, dtype, params, grads)
        assert all(np.isnan(p).all() for p in got)
        assert not math.isfinite(opt.last_grad_norm())


class PlainSGD(Optimizer):
    """A user optimizer whose update knows nothing of clipping: the base scales its gradients."""

    name = "test_clip_plain_sgd"

    def _update(self, i, p, g, lr, weight_decay):
        self.engine.map(PLAIN_SGD, (p, g), (lr,))

    def config(self):
        return {"name": self.name, "lr": self.lr}


PLAIN_SGD = Map("test_clip_plain_sgd", "w g", writes="w", scalars="lr", body="w = w - lr * g")


def test_a_user_optimizer_is_clipped_too(engine, dtype):
    params, grads = problem(dtype, seed=2)
    clipnorm = float(np.median(norms(grads)))
    assert not PlainSGD.applies_clip
    opt = PlainSGD(0.1, clipnorm=clipnorm)
    got = run(engine, opt, dtype, params, grads)
    close(got, ref_sgd(params, clipped(grads, clipnorm), 0.1), dtype)
    assert repr(opt) == f"PlainSGD(lr=0.1, clipnorm={clipnorm!r})"


# -- in training -----------------------------------------------------------------------------------
def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    return x, (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] > 0).astype(int)


def test_sgd_with_clipnorm_does_not_fold_and_matches(engine, dtype):
    assert dn.SGD(0.1).folds_into_gemm
    sgd = dn.SGD(0.1, clipnorm=1.0)
    assert not sgd.folds_into_gemm and sgd.gemm_update(0.0) is None and sgd.t == 0
    x, y = data()
    net = dn.Network(5, [dn.Dense(8, "tanh"), dn.Dense(2, "softmax")], engine=engine, dtype=dtype.name, seed=1)
    before = net.get_weights()
    grads = net.gradients(x, y)
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for layer in grads for g in layer))
    opt = dn.SGD(0.5, clipnorm=0.5 * norm)
    net.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, optimizer=opt, progress=False)   # one step
    after = net.get_weights()
    for params, gs, new in zip(before, grads, after):
        for p, g, q in zip(params, gs, new):
            np.testing.assert_allclose(q, p - 0.5 * 0.5 * g, rtol=TOL[dtype]["rtol"] * 50, atol=TOL[dtype]["atol"] * 50)
    np.testing.assert_allclose(opt.last_grad_norm(), norm, rtol=TOL[dtype]["rtol"] * 50)
    net.release()


def test_a_folding_trainer_refuses_a_clipping_sgd():
    x, y = data()
    net = dn.Network(5, [dn.Dense(2, "softmax")], seed=0)
    tn = net.trainer(8, net.default_cost(), gradients=False)
    opt = dn.SGD(0.1, clipnorm=1.0).bind(net.engine, tn.params, net.dtype)
    tn.load(net.engine.to_engine(x, net.dtype), net.engine.to_engine(np.eye(2)[y], net.dtype), None, np.arange(8))
    with pytest.raises(DensennError, match="needs gradients"):
        tn.step(8, opt, 0.0, False)


@pytest.mark.parametrize("make", [lambda: dn.Adam(clipnorm=1.0), lambda: dn.SGD(0.2, momentum=0.9, clipnorm=0.5),
                                  lambda: dn.SGD(0.5, clipnorm=0.5)], ids=["adam", "momentum", "sgd"])
def test_fit_trains_with_clipnorm(engine, make):
    """fit needs nothing for clipnorm: it lives on the optimizer."""
    x, y = data(200)
    net = dn.Network(5, [dn.Dense(16, "relu"), dn.Dense(2, "softmax")], engine=engine, seed=0)
    opt = make()
    history = net.fit(x, y, epochs=15, batch_size=20, optimizer=opt, progress=False)
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert net.evaluate(x, y)["accuracy"] > 0.8
    assert opt.t == 150 and opt.last_grad_norm() > 0
    net.release()


# -- configs, values, memory -------------------------------------------------------------------------
def test_config_round_trip():
    for opt in (dn.SGD(0.1, clipnorm=2.5), dn.SGD(0.1, momentum=0.9, nesterov=True, clipnorm=1),
                dn.Adam(clipnorm=0.5), dn.AdamW(1e-3, clipnorm=3.0), dn.Adam()):
        config = opt.config()
        assert config["clipnorm"] == opt.clipnorm
        again = dn.get_optimizer(config)
        assert type(again) is type(opt) and again.config() == config and repr(again) == repr(opt)
        assert f"clipnorm={opt.clipnorm!r}" in repr(opt)
    assert dn.SGD(0.1, clipnorm=1).clipnorm == 1.0 and isinstance(dn.SGD(0.1, clipnorm=1).clipnorm, float)
    # configs written before clipnorm existed have no such key: no clipping
    assert dn.get_optimizer({"name": "adam", "lr": 0.01}).clipnorm is None
    assert dn.get_optimizer({"name": "sgd", "clipnorm": 2.0}).clipnorm == 2.0


def test_a_pickled_network_keeps_the_clipnorm():
    x, y = data()
    net = dn.Network(5, [dn.Dense(2, "softmax")], seed=0)
    net.fit(x, y, epochs=1, batch_size=16, optimizer=dn.Adam(clipnorm=0.25), progress=False)
    again = pickle.loads(pickle.dumps(net))
    assert again.optimizer.clipnorm == 0.25 and again.optimizer.config() == net.optimizer.config()


BAD = [0, -1.0, float("nan"), float("inf"), True, "1.0", [1.0]]


@pytest.mark.parametrize("value", BAD, ids=repr)
@pytest.mark.parametrize("make", [lambda c: dn.SGD(0.1, clipnorm=c), lambda c: dn.SGD(0.1, momentum=0.9, clipnorm=c),
                                  lambda c: dn.Adam(clipnorm=c), lambda c: dn.AdamW(clipnorm=c),
                                  lambda c: PlainSGD(0.1, clipnorm=c),
                                  lambda c: dn.get_optimizer({"name": "adam", "clipnorm": c})],
                         ids=["sgd", "momentum", "adam", "adamw", "user", "config"])
def test_bad_clipnorm_raises(make, value):
    with pytest.raises(DensennError, match="clipnorm"):
        make(value)


def test_clipnorm_set_later_is_checked_and_used():
    opt = dn.SGD(0.1)
    with pytest.raises(DensennError, match="clipnorm"):
        opt.clipnorm = -2
    e = dn.get_engine("cpu:numpy")
    params, grads = problem(np.float64)
    ps = [np.array(p) for p in params]
    opt.bind(e, ps, np.float64)
    assert opt.nbytes() == 0
    opt.clipnorm = 1.0
    opt.bind(e, ps, np.float64)     # same parameters: the norm's buffer is added
    assert opt.nbytes() == 16
    for gs in grads:
        opt.step(ps, [g.copy() for g in gs], DECAYS)
    close(ps, ref_sgd(params, clipped(grads, 1.0), 0.1), np.float64)
    opt.release()
    assert opt.nbytes() == 0 and opt.last_grad_norm() is None


@pytest.mark.usefixtures("one_blas_thread")
@pytest.mark.parametrize("optimizer", ["adam", "momentum", "sgd"])
@pytest.mark.parametrize("engine_name", memory.ENGINES)
def test_a_clipped_step_allocates_nothing(engine_name, optimizer, monkeypatch):
    clip = {"adam": lambda: dn.Adam(1e-3, clipnorm=0.05), "momentum": lambda: dn.SGD(0.01, momentum=0.9, clipnorm=0.05),
            "sgd": lambda: dn.SGD(0.01, clipnorm=0.05)}
    monkeypatch.setitem(memory.OPTIMIZERS, f"{optimizer}-clip", clip[optimizer])
    memory.check_steps(engine_name, f"{optimizer}-clip", partial=True)


# -- the scalar role ---------------------------------------------------------------------------------
SCALED = Map("test_scalar_scaled", "y x f:scalar", writes="y", body="y = f * x")
SHIFTED = Map("test_scalar_shifted", "y x b:col f:scalar", writes="y", scalars="c", body="y = f * x + b + c")
SUMMED = Sum("test_scalar_summed", "x f:scalar", body="term = f * x",
             numpy=lambda engine, arrays, scalars, work: arrays[1][0] * np.sum(arrays[0]))


def scalar_at_offset(engine, value, dtype):
    """f as the middle element of a three-element buffer (as the optimizers keep it)."""
    buf = to_dev(engine, [np.nan, value, np.nan], dtype)
    return buf, buf[1:2]


def test_scalar_arrays_are_read_by_every_element(engine, dtype):
    rng = np.random.default_rng(0)
    x_host, b_host = rng.normal(size=(37, 11)), rng.normal(size=11)
    x_host = x_host.astype(dtype).astype(np.float64)
    buf, f = scalar_at_offset(engine, 2.5, dtype)
    x = to_dev(engine, x_host, dtype)
    y = to_dev(engine, np.full((37, 11), np.nan), dtype)
    engine.map(SCALED, (y, x, f))
    np.testing.assert_allclose(engine.to_host(y), 2.5 * x_host, **TOL[dtype])
    engine.map(SHIFTED, (y, x, to_dev(engine, b_host, dtype), f), (0.25,))
    np.testing.assert_allclose(engine.to_host(y), 2.5 * x_host + b_host.astype(dtype) + 0.25, **TOL[dtype])
    acc = to_dev(engine, [1.0], dtype)
    engine.reduce(SUMMED, (x, f), (), acc)
    np.testing.assert_allclose(engine.to_host(acc)[0], 1.0 + 2.5 * x_host.sum(), rtol=TOL[dtype]["rtol"] * 10)
    host = engine.to_host(buf)
    assert np.isnan(host[0]) and host[1] == 2.5 and np.isnan(host[2])     # read, never written
    with pytest.raises(DensennError, match="1 element"):
        engine.map(SCALED, (y, x, buf[0:2]))


@pytest.mark.parametrize("fused", [True, False], ids=["numba", "numpy"])
def test_scalar_arrays_go_whole_to_every_row_block(fused):
    if fused and not NUMBA:
        pytest.skip("Numba is not installed")
    e = CPUEngine(fused=fused, threads=2)
    x_host = np.random.default_rng(1).normal(size=(1 << 20) + 3).astype(np.float32)
    _, f = scalar_at_offset(e, -0.5, np.float32)
    y = e.empty(x_host.shape, np.float32)
    e.map(SCALED, (y, x_host, f))
    np.testing.assert_array_equal(y, np.float32(-0.5) * x_host)
    w, g, m, v = (x_host.copy() for _ in range(4))
    v = np.abs(v)
    ref = [a.copy() for a in (w, g, m, v)]
    adam_update(e, w, g, m, v, 0.01, 1e-8, 0.9, 0.999, 0.0, 0.0, np.empty_like(w), f)
    adam_update(CPUEngine(fused=fused, threads=1), *ref, 0.01, 1e-8, 0.9, 0.999, 0.0, 0.0,
                         np.empty_like(w), f)
    for a, b in zip((w, m, v), (ref[0], ref[2], ref[3])):
        np.testing.assert_array_equal(a, b)


def test_scalar_arrays_are_read_only():
    with pytest.raises(DensennError, match="scalar array"):
        Map("test_scalar_written", "x f:scalar", writes="x f", body="x = f\nf = x")
