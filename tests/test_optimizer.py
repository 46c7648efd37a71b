"""Optimizers against reference implementations written here (PyTorch's formulas).

SGD: L2 weight decay adds wd·w to the gradient (weights only, not biases);
momentum keeps v = μv − lr·g and steps w += v; Nesterov steps w += μv − lr·g with
the new v. (PyTorch writes the same with buf = μ·buf + g, w −= lr·buf, and for
Nesterov w −= lr·(g + μ·buf): identical for a constant rate, checked below.)
Adam: bias-corrected moments; AdamW: w ← w·(1 − lr·wd) before the Adam step.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import densenn as dn
from densenn.backend import get_engine
from densenn.backend.cpu.fused import AVAILABLE as NUMBA
from densenn.optim import Constant, get_schedule

ENGINES = ["cpu:numpy"] + (["cpu:numba"] if NUMBA else [])
DTYPES = [np.float64, np.float32]
STEPS = 5
SHAPES = [(4, 3), (4,), (2, 4), (2,)]     # w, b, w, b of a two-layer network
DECAYS = [True, False, True, False]       # weight decay for weights, not biases


def problem(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s) for s in SHAPES]
    grads = [[rng.normal(size=s) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def run_densenn(opt, engine, dtype, params, grads, epochs=None):
    """STEPS optimizer steps on engine copies of params; returns them as float64 host arrays."""
    e = get_engine(engine)
    ps = [e.to_engine(np.array(p, copy=True), dtype) for p in params]
    opt.bind(e, ps, np.dtype(dtype))
    for t, gs in enumerate(grads):
        g_dev = [e.to_engine(np.array(g, copy=True), dtype) for g in gs]   # step overwrites grads
        opt.step(ps, g_dev, DECAYS, 0.0 if epochs is None else epochs[t])
    assert opt.t == len(grads)
    return [e.to_host(p).astype(np.float64) for p in ps]


# -- references --------------------------------------------------------------------------------
def ref_sgd(params, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0, lrs=None):
    """The brief's formulation: v = μv − lr·g; w += v (Nesterov: w += μv − lr·g)."""
    w = [p.copy() for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, gs in enumerate(grads):
        rate = lr if lrs is None else lrs[t]
        for i, g in enumerate(gs):
            g = g + (weight_decay * w[i] if DECAYS[i] else 0.0)
            if momentum == 0.0:
                w[i] = w[i] - rate * g
                continue
            v[i] = momentum * v[i] - rate * g
            w[i] = w[i] + (momentum * v[i] - rate * g if nesterov else v[i])
    return w


def ref_sgd_torch_style(params, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's formulation (dampening 0): buf = μ·buf + g; w −= lr·(g + μ·buf or buf)."""
    w = [p.copy() for p in params]
    buf = [None] * len(params)
    for gs in grads:
        for i, g in enumerate(gs):
            d = g + (weight_decay * w[i] if DECAYS[i] else 0.0)
            if momentum:
                buf[i] = d.copy() if buf[i] is None else momentum * buf[i] + d
                d = d + momentum * buf[i] if nesterov else buf[i]
            w[i] = w[i] - lr * d
    return w


def ref_adam(params, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """torch.optim.Adam / AdamW."""
    w = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            wd = weight_decay if DECAYS[i] else 0.0
            if decoupled:
                w[i] = w[i] * (1.0 - lr * wd)
            else:
                g = g + wd * w[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1 ** t)
            v_hat = v[i] / (1 - beta2 ** t)
            w[i] = w[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


def close(got, expected, dtype):
    kw = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for g, x in zip(got, expected):
        np.testing.assert_allclose(g, x, **kw)


# -- SGD ----------------------------------------------------------------------------------------
SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_matches_reference(kw, dtype, engine):
    params, grads = problem()
    got = run_densenn(dn.SGD(**kw), engine, dtype, params, grads)
    close(got, ref_sgd(params, grads, **kw), dtype)
    close(got, ref_sgd_torch_style(params, grads, **kw), dtype)
    moved = [not np.allclose(g, p) for g, p in zip(got, params)]
    assert all(moved)


def test_weight_decay_spares_biases():
    params, grads = problem()
    zero = [[np.zeros_like(g) for g in gs] for gs in grads]
    got = run_densenn(dn.SGD(lr=0.1, weight_decay=0.5), "cpu:numpy", np.float64, params, zero)
    for p, g, decays in zip(params, got, DECAYS):
        if decays:
            np.testing.assert_allclose(g, p * (1 - 0.1 * 0.5) ** STEPS, rtol=1e-12)
        else:
            np.testing.assert_array_equal(g, p)


# -- Adam, AdamW --------------------------------------------------------------------------------
ADAM_CASES = [
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-3)),
    ("adam", dict(lr=1e-2, weight_decay=0.1)),
    ("adamw", dict(lr=1e-2, weight_decay=0.1)),
    ("adamw", dict(lr=3e-2, weight_decay=0.5, beta1=0.5, eps=1e-4)),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,kw", ADAM_CASES,
                         ids=[f"{k}:" + ",".join(f"{a}={b}" for a, b in kw.items()) for k, kw in ADAM_CASES])
def test_adam_matches_reference(kind, kw, dtype, engine):
    params, grads = problem(1)
    opt = dn.AdamW(**kw) if kind == "adamw" else dn.Adam(**kw)
    assert opt.decoupled == (kind == "adamw")
    got = run_densenn(opt, engine, dtype, params, grads)
    close(got, ref_adam(params, grads, decoupled=kind == "adamw", **kw), dtype)


def test_adam_first_step_moves_each_weight_by_lr():
    """Bias correction: the first Adam step is lr·sign(g) (up to eps)."""
    params, grads = problem(2)
    got = run_densenn(dn.Adam(lr=0.01), "cpu:numpy", np.float64, params, grads[:1])
    for p, g, w in zip(params, grads[0], got):
        np.testing.assert_allclose(w - p, -0.01 * np.sign(g), rtol=1e-6)


def test_torch_agrees_when_installed():
    torch = pytest.importorskip("torch")
    params, grads = problem(3)

    def run_torch(make):
        ts = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
        groups = [{"params": [t for t, d in zip(ts, DECAYS) if d]},
                  {"params": [t for t, d in zip(ts, DECAYS) if not d], "weight_decay": 0.0}]
        opt = make(groups)
        for gs in grads:
            for t, g in zip(ts, gs):
                t.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        return [t.detach().numpy() for t in ts]

    cases = [
        (dn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.02),
         lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02)),
        (dn.SGD(0.05, momentum=0.9, weight_decay=0.02),
         lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.9, weight_decay=0.02)),
        (dn.Adam(0.01, weight_decay=0.1), lambda g: torch.optim.Adam(g, lr=0.01, weight_decay=0.1)),
        (dn.AdamW(0.01, weight_decay=0.1), lambda g: torch.optim.AdamW(g, lr=0.01, weight_decay=0.1)),
    ]
    for ours, theirs in cases:
        close(run_densenn(ours, "cpu:numpy", np.float64, params, grads), run_torch(theirs), np.float64)


# -- state, binding, memory ------------------------------------------------------------------------
def test_state_buffers_and_nbytes():
    e = get_engine("cpu:numpy")
    ps = [e.zeros(s, np.float32) for s in SHAPES]
    param_bytes = sum(p.nbytes for p in ps)
    assert dn.SGD(0.1).bind(e, ps, np.float32).nbytes() == 0
    assert dn.SGD(0.1, momentum=0.9).bind(e, ps, np.float32).nbytes() == param_bytes
    adam = dn.Adam().bind(e, ps, np.float32)
    largest = max(p.size for p in ps) * 4
    assert adam.nbytes() == 2 * param_bytes + largest
    adam.release()
    assert adam.nbytes() == 0 and adam.engine is None


def test_bind_is_idempotent_and_reset_forgets():
    params, grads = problem(4)
    e = get_engine("cpu:numpy")
    ps = [np.array(p) for p in params]
    opt = dn.SGD(0.1, momentum=0.9).bind(e, ps, np.float64)
    opt.step(ps, [g.copy() for g in grads[0]], DECAYS)
    v = [s[0].copy() for s in opt.state]
    assert any(np.abs(x).sum() > 0 for x in v)
    opt.bind(e, ps, np.float64)                   # same parameters: momentum kept
    for s, x in zip(opt.state, v):
        np.testing.assert_array_equal(s[0], x)
    opt.reset()
    assert opt.t == 0 and all(not s[0].any() for s in opt.state)
    opt.bind(e, [np.zeros((3, 3))], np.float64)   # other parameters: new state
    assert len(opt.state) == 1 and opt.state[0][0].shape == (3, 3)


def test_optimizer_continues_across_fit_calls():
    """fit twice with the same optimizer = one fit with its moments and step count carried on."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    net = dn.Network(3, [dn.Dense(4, "tanh"), dn.Dense(2, "softmax")], dtype="float64", seed=0)
    opt = dn.Adam(0.01)
    net.fit(x, y, epochs=1, batch_size=5, optimizer=opt, progress=False)
    net.fit(x, y, epochs=1, batch_size=5, optimizer=opt, progress=False)
    assert opt.t == 8


# -- schedules ---------------------------------------------------------------------------------------
def test_schedule_values():
    assert [Constant().factor(e) for e in (0, 3.5, 100)] == [1.0, 1.0, 1.0]
    step = dn.StepDecay(every=2, gamma=0.5)
    assert [step.factor(e) for e in (0, 1.99, 2, 3.5, 4, 7)] == [1, 1, 0.5, 0.5, 0.25, 0.125]
    lin = dn.LinearDecay(end_factor=0.1, total_epochs=10)
    np.testing.assert_allclose([lin.factor(e) for e in (0, 2.5, 5, 10, 20)], [1, 0.775, 0.55, 0.1, 0.1])
    cos = dn.CosineDecay(min_factor=0.0, total_epochs=10)
    np.testing.assert_allclose([cos.factor(e) for e in (0, 5, 10, 30)], [1, 0.5, 0, 0], atol=1e-15)
    cos2 = dn.CosineDecay(min_factor=0.2, total_epochs=4)
    np.testing.assert_allclose(cos2.factor(1), 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    opt = dn.SGD(0.4, schedule=step)
    assert opt.current_lr(0) == 0.4 and opt.current_lr(2) == 0.2


def test_get_schedule_forms():
    assert isinstance(get_schedule(None), Constant)
    assert get_schedule("cosine").name == "cosine"
    s = get_schedule({"name": "step", "every": 3, "gamma": 0.5})
    assert s.every == 3 and s.gamma == 0.5
    assert get_schedule(s) is s
    for cfg in (dn.StepDecay(3, 0.5), dn.LinearDecay(0.2, 7), dn.CosineDecay(0.1, 9)):
        again = get_schedule(cfg.config())
        assert again.config() == cfg.config()


@pytest.mark.parametrize("engine", ENGINES)
def test_step_uses_the_scheduled_rate(engine):
    params, grads = problem(5)
    epochs = [0.0, 0.5, 1.0, 2.5, 4.0]
    lrs = [0.1 * 0.5 ** math.floor(ep) for ep in epochs]
    got = run_densenn(dn.SGD(0.1, schedule=dn.StepDecay(every=1, gamma=0.5)), engine, np.float64,
                      params, grads, epochs)
    close(got, ref_sgd(params, grads, lr=None, lrs=lrs), np.float64)
    got = run_densenn(dn.SGD(0.1, momentum=0.9, schedule=dn.StepDecay(every=1, gamma=0.5)), engine,
                      np.float64, params, grads, epochs)
    close(got, ref_sgd(params, grads, lr=None, momentum=0.9, lrs=lrs), np.float64)


def test_fit_gives_the_schedule_its_horizon():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    net = dn.Network(3, [dn.Dense(2, "softmax")], seed=0)
    h = net.fit(x, y, epochs=4, batch_size=8, optimizer=dn.SGD(0.2, schedule=dn.LinearDecay()), progress=False)
    np.testing.assert_allclose(h["lr"], [0.2, 0.15, 0.1, 0.05])
    h = net.fit(x, y, epochs=4, batch_size=8, optimizer=dn.SGD(0.2, schedule="cosine"), progress=False)
    np.testing.assert_allclose(h["lr"], [0.2 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])


# -- names and configs --------------------------------------------------------------------------------
def test_get_optimizer_names_and_configs():
    assert type(dn.get_optimizer("sgd")) is dn.SGD
    m = dn.get_optimizer("momentum", lr=0.2)
    assert m.momentum == 0.9 and not m.nesterov and m.lr == 0.2
    n = dn.get_optimizer("nesterov")
    assert n.nesterov and n.momentum == 0.9
    assert type(dn.get_optimizer("adam")) is dn.Adam
    w = dn.get_optimizer("adamw", lr=0.003)
    assert w.decoupled and w.weight_decay > 0 and w.lr == 0.003
    opt = dn.Adam(0.002)
    assert dn.get_optimizer(opt) is opt
    for o in (dn.SGD(0.1, momentum=0.5, nesterov=True, weight_decay=0.01, schedule=dn.StepDecay(2, 0.5)),
              dn.AdamW(0.01, weight_decay=0.2, beta1=0.8)):
        again = dn.get_optimizer(o.config())
        assert type(again) is type(o) and again.config() == o.config()
        assert repr(again) == repr(o)


# -- bad hyper-parameters -----------------------------------------------------------------------------
BAD = [
    (lambda: dn.SGD(lr=0), "lr"),
    (lambda: dn.SGD(lr=-0.1), "lr"),
    (lambda: dn.SGD(lr=float("nan")), "lr"),
    (lambda: dn.SGD(lr=float("inf")), "lr"),
    (lambda: dn.SGD(lr=True), "lr"),
    (lambda: dn.SGD(lr="0.1"), "lr"),
    (lambda: dn.SGD(0.1, momentum=1.0), "momentum"),
    (lambda: dn.SGD(0.1, momentum=1.5), "momentum"),
    (lambda: dn.SGD(0.1, momentum=-0.1), "momentum"),
    (lambda: dn.SGD(0.1, nesterov=True), "nesterov"),
    (lambda: dn.SGD(0.1, momentum=0.0, nesterov=True), "nesterov"),
    (lambda: dn.SGD(0.1, weight_decay=-1e-3), "weight_decay"),
    (lambda: dn.SGD(0.1, weight_decay=float("nan")), "weight_decay"),
    (lambda: dn.Adam(lr=0), "lr"),
    (lambda: dn.Adam(lr=-1e-3), "lr"),
    (lambda: dn.Adam(beta1=1.0), "beta1"),
    (lambda: dn.Adam(beta1=-0.1), "beta1"),
    (lambda: dn.Adam(beta2=1.0), "beta2"),
    (lambda: dn.Adam(eps=0), "eps"),
    (lambda: dn.AdamW(weight_decay=-0.1), "weight_decay"),
    (lambda: dn.AdamW(lr=0), "lr"),
    (lambda: dn.get_optimizer("rmsprop"), "optimizer"),
    (lambda: dn.get_optimizer("SGD "), "optimizer"),
    (lambda: dn.get_optimizer(None), "optimizer"),
    (lambda: dn.get_optimizer(0.1), "optimizer"),
    (lambda: dn.get_optimizer({"name": "rmsprop"}), "optimizer"),
    (lambda: dn.get_optimizer({"lr": 0.1}), "optimizer"),
    (lambda: dn.get_optimizer({"name": "sgd", "learning_rate": 0.1}), "learning_rate"),
    (lambda: dn.get_optimizer("sgd", lr=0), "lr"),
    (lambda: dn.get_optimizer("nesterov", lr=-1), "lr"),
    (lambda: dn.SGD(0.1, schedule="exponential"), "schedule"),
    (lambda: get_schedule({"name": "step", "step_size": 3}), "step_size"),
    (lambda: dn.StepDecay(every=0), "every"),
    (lambda: dn.StepDecay(every=1.5), "every"),
    (lambda: dn.StepDecay(gamma=0), "gamma"),
    (lambda: dn.StepDecay(gamma=1.5), "gamma"),
    (lambda: dn.LinearDecay(end_factor=2.0), "end_factor"),
    (lambda: dn.LinearDecay(total_epochs=0), "total_epochs"),
    (lambda: dn.CosineDecay(min_factor=-0.5), "min_factor"),
    (lambda: dn.CosineDecay(total_epochs=-1), "total_epochs"),
]


@pytest.mark.parametrize("make,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_hyper_parameters_raise(make, name):
    with pytest.raises(dn.DensennError) as info:
        make()
    assert name in str(info.value), str(info.value)


def test_unknown_optimizer_message_lists_the_choices():
    with pytest.raises(dn.DensennError) as info:
        dn.get_optimizer("rmsprop")
    for name in ("sgd", "momentum", "nesterov", "adam", "adamw"):
        assert name in str(info.value)
