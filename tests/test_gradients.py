"""Backpropagation against finite differences and an independent NumPy backprop.

Every activation as the hidden layer × every (output activation, cost) pair that
is valid: quadratic and MAE with every output activation, categorical
cross-entropy with softmax, binary cross-entropy with sigmoid. Targets fit each
cost: one-hot classes for cross-entropy, 0/1 for BCE, reals for quadratic/MAE
(for MAE kept well away from the outputs, where |a - y| has its kink).
"""
from __future__ import annotations

import numpy as np
import pytest

import densenn as dn
from densenn.backend.cpu.fused import AVAILABLE as NUMBA
from densenn.nn.activation import ACTIVATIONS, ELU, LeakyReLU, get_activation
from densenn.nn.network import TrainingNetwork
from test_activations_modern import NAMES as MODERN  # the new activations' references
from test_activations_modern import ref_df, ref_f

ENGINES = ["cpu:numpy"] + (["cpu:numba"] if NUMBA else [])
HIDDEN = list(ACTIVATIONS) + [LeakyReLU(0.2), ELU(0.5)]
HIDDEN_IDS = [h if isinstance(h, str) else repr(h) for h in HIDDEN]
OUTPUT_COSTS = ([(out, "quadratic") for out in ACTIVATIONS] + [(out, "mae") for out in ACTIVATIONS]
                + [("softmax", "crossentropy"), ("sigmoid", "binary_crossentropy")])
N_IN, N_HIDDEN, N_OUT, N = 4, 5, 3, 6


# -- an independent NumPy backprop (non-fused: ∂C/∂a, then the activation's Jacobian) -------
def np_activ(act, z):
    p, name = act.param, act.name
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, p * z)
    if name == "elu":
        return np.where(z > 0, z, p * np.expm1(np.minimum(z, 0)))
    if name == "softplus":
        return np.log1p(np.exp(z))
    if name == "linear":
        return z
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if name in MODERN:
        return ref_f(name, z)
    raise AssertionError(name)


def np_backprop_signal(act, z, g):
    """∂/∂z of Σ g∘f(z): elementwise f'(z)∘g, or softmax's Jacobian-vector product."""
    p, name = act.param, act.name
    if name == "softmax":
        s = np_activ(act, z)
        return s * (g - (s * g).sum(axis=1, keepdims=True))
    if name in ("sigmoid", "softplus"):
        s = 1.0 / (1.0 + np.exp(-z))
        prime = s * (1 - s) if name == "sigmoid" else s
    elif name == "tanh":
        prime = 1.0 / np.cosh(z) ** 2
    elif name == "relu":
        prime = (z > 0).astype(float)
    elif name == "leaky_relu":
        prime = np.where(z > 0, 1.0, p)
    elif name == "elu":
        prime = np.where(z > 0, 1.0, p * np.exp(np.minimum(z, 0)))
    elif name == "linear":
        prime = np.ones_like(z)
    elif name in MODERN:
        prime = ref_df(name, z)
    else:
        raise AssertionError(name)
    return prime * g


def np_cost(cost, a, y):
    """(mean cost, ∂(mean cost)/∂a)."""
    n = a.shape[0]
    if cost == "quadratic":
        return 0.5 * ((a - y) ** 2).sum() / n, (a - y) / n
    if cost == "mae":
        return np.abs(a - y).sum() / n, np.sign(a - y) / n
    if cost == "crossentropy":
        return -(y * np.log(a)).sum() / n, -y / a / n
    if cost == "binary_crossentropy":
        return (-(y * np.log(a) + (1 - y) * np.log(1 - a)).sum() / n,
                (a - y) / (a * (1 - a)) / n)
    raise AssertionError(cost)


def np_gradients(net, x, y, cost):
    """[(dw, db), ...] and the loss, by the textbook backward pass in float64."""
    weights = net.get_weights()
    acts = [l.activation for l in net.layers]
    inputs, zs = [], []
    a = np.asarray(x, dtype=np.float64)
    for (w, b), act in zip(weights, acts):
        inputs.append(a)
        z = a @ w.T + b
        zs.append(z)
        a = np_activ(act, z)
    loss, g = np_cost(cost, a, y)
    grads = []
    for (w, _), act, z, a_in in reversed(list(zip(weights, acts, zs, inputs))):
        delta = np_backprop_signal(act, z, g)
        grads.append((delta.T @ a_in, delta.sum(axis=0)))
        g = delta @ w
    return grads[::-1], loss


# -- problems ---------------------------------------------------------------------------------
def make_problem(hidden, out, cost, engine="cpu:numpy", seed=0, layers=None):
    """A float64 network and (x, y) valid for ``cost``; y in the form fit/gradients accept."""
    rng = np.random.default_rng(seed)
    specs = layers or [dn.Dense(N_HIDDEN, hidden), dn.Dense(N_OUT, out)]
    net = dn.Network(N_IN, specs, engine=engine, dtype="float64", seed=seed)
    # biases away from zero too, so that their gradients are exercised
    net.set_weights([(w, rng.uniform(-0.3, 0.3, b.shape)) for w, b in net.get_weights()])
    x = rng.normal(size=(N, N_IN))
    n_out = specs[-1].units
    if cost == "crossentropy":
        labels = rng.integers(0, n_out, N)
        return net, x, labels, np.eye(n_out)[labels]
    if cost == "binary_crossentropy":
        y = rng.integers(0, 2, (N, n_out)).astype(float)
        y[0] = 1 - y[1]                      # not one-hot rows only
        return net, x, y, y
    a = net.predict(x)
    if cost == "mae":
        # |a - y| >= 0.3 everywhere: no kink within reach of the finite differences
        y = a + rng.choice([-1.0, 1.0], a.shape) * rng.uniform(0.3, 1.0, a.shape)
    else:
        y = rng.normal(size=a.shape)
    return net, x, y, y


def assert_grads_close(got, expected, rtol=1e-9, atol=1e-12):
    assert len(got) == len(expected)
    for (gw, gb), (ew, eb) in zip(got, expected):
        np.testing.assert_allclose(gw, ew, rtol=rtol, atol=atol)
        np.testing.assert_allclose(gb, eb, rtol=rtol, atol=atol)


# -- the gradient check -------------------------------------------------------------------------
@pytest.mark.parametrize("out,cost", OUTPUT_COSTS, ids=[f"{o}-{c}" for o, c in OUTPUT_COSTS])
@pytest.mark.parametrize("hidden", HIDDEN, ids=HIDDEN_IDS)
def test_backprop_matches_finite_differences(hidden, out, cost):
    net, x, y, y_matrix = make_problem(hidden, out, cost)
    err = dn.check_gradients(net, x, y, cost=cost)
    assert err < 1e-6, f"hidden={hidden} out={out} cost={cost}: relative error {err:.2e}"
    # and the independent NumPy backprop (the non-fused textbook path) agrees
    expected, loss = np_gradients(net, x, y_matrix, cost)
    assert_grads_close(net.gradients(x, y, cost=cost), expected)
    assert net.evaluate(x, y, cost=cost)["loss"] == pytest.approx(loss, rel=1e-12)


@pytest.mark.skipif(not NUMBA, reason="Numba is not installed: no fused CPU kernels to check")
@pytest.mark.parametrize("out,cost", OUTPUT_COSTS, ids=[f"{o}-{c}" for o, c in OUTPUT_COSTS])
@pytest.mark.parametrize("hidden", ["relu", "leaky_relu", "linear", LeakyReLU(0.2)],
                         ids=["relu", "leaky_relu", "linear", "LeakyReLU(0.2)"])
def test_fused_cpu_kernels_give_the_same_gradients(hidden, out, cost):
    net, x, y, y_matrix = make_problem(hidden, out, cost, engine="cpu:numba")
    expected, _ = np_gradients(net, x, y_matrix, cost)
    assert_grads_close(net.gradients(x, y, cost=cost), expected)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layers,cost", [
    ([dn.Dense(6, "tanh"), dn.Dense(5, "relu"), dn.Dense(4, "softmax")], "crossentropy"),
    ([dn.Dense(6, "elu"), dn.Dense(5, "sigmoid"), dn.Dense(4, "sigmoid")], "binary_crossentropy"),
    ([dn.Dense(6, "softplus"), dn.Dense(5, "leaky_relu"), dn.Dense(4, "linear")], "quadratic"),
    ([dn.Dense(4, "sigmoid")], "binary_crossentropy"),
    ([dn.Dense(1, "linear")], "mae"),
], ids=["tanh-relu-softmax", "elu-sigmoid-sigmoid", "softplus-leaky-linear", "one-layer-sigmoid",
        "one-layer-linear-mae"])
def test_deeper_and_single_layer_networks(layers, cost, engine):
    net, x, y, y_matrix = make_problem(None, None, cost, engine=engine, seed=3, layers=layers)
    assert dn.check_gradients(net, x, y, cost=cost) < 1e-6
    expected, _ = np_gradients(net, x, y_matrix, cost)
    assert_grads_close(net.gradients(x, y, cost=cost), expected)


def test_gradient_shapes_match_the_weights():
    net = dn.Network(7, [dn.Dense(5, "relu"), dn.Dense(3, "tanh"), dn.Dense(2, "softmax")], seed=1)
    x = np.random.default_rng(0).normal(size=(9, 7))
    grads = net.gradients(x, np.arange(9) % 2)
    weights = net.get_weights()
    assert len(grads) == len(weights) == 3
    for (gw, gb), (w, b) in zip(grads, weights):
        assert gw.shape == w.shape and gb.shape == b.shape
        assert gw.dtype == w.dtype == np.float32 and gb.dtype == b.dtype == np.float32
        assert np.isfinite(gw).all() and np.isfinite(gb).all()


def test_gradients_leave_the_network_unchanged():
    net, x, y, _ = make_problem("tanh", "softmax", "crossentropy")
    before = net.get_weights()
    net.gradients(x, y)
    dn.check_gradients(net, x, y)
    for (w0, b0), (w1, b1) in zip(before, net.get_weights()):
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_array_equal(b0, b1)


def test_default_cost_follows_the_output_activation():
    for out, cost in [("softmax", "crossentropy"), ("sigmoid", "binary_crossentropy"), ("linear", "quadratic")]:
        net, x, y, y_matrix = make_problem("tanh", out, cost)
        assert_grads_close(net.gradients(x, y), np_gradients(net, x, y_matrix, cost)[0])


# -- the fused a - y path against the non-fused one --------------------------------------------
FUSED_PAIRS = [("softmax", "crossentropy"), ("sigmoid", "binary_crossentropy"), ("linear", "quadratic")]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("out,cost", FUSED_PAIRS, ids=[f"{o}-{c}" for o, c in FUSED_PAIRS])
def test_fused_delta_equals_the_non_fused_path(out, cost, engine):
    net, x, y, y_matrix = make_problem("tanh", out, cost, engine=engine, seed=5)
    e = net.engine

    def grads(fused: bool):
        with TrainingNetwork(net, N, cost) as tn:
            assert tn.fused                       # the output activation is the cost's partner
            tn.fused = fused                      # force the generic ∂C/∂a → activation path
            e.upload(np.ascontiguousarray(x), tn.x)
            e.upload(np.ascontiguousarray(y_matrix), tn.y)
            tn.forward_backward(N, with_labels=False)
            delta = e.to_host(tn.layers[-1].z)
            return delta, [(e.to_host(l.dw), e.to_host(l.db)) for l in tn.layers]

    delta_fused, g_fused = grads(True)
    delta_plain, g_plain = grads(False)
    # delta of the last layer: (a - y)/n, by the chain rule written out in NumPy
    a = net.predict(x)
    np.testing.assert_allclose(delta_fused, (a - y_matrix) / N, rtol=1e-12, atol=1e-15)
    _, dC_da = np_cost(cost, a, y_matrix)
    zs = np.asarray(x) @ net.get_weights()[0][0].T + net.get_weights()[0][1]
    z_last = np.tanh(zs) @ net.get_weights()[1][0].T + net.get_weights()[1][1]
    chain = np_backprop_signal(get_activation(out), z_last, dC_da)
    np.testing.assert_allclose(chain, (a - y_matrix) / N, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(delta_plain, chain, rtol=1e-9, atol=1e-14)
    assert_grads_close(g_fused, g_plain, rtol=1e-9, atol=1e-14)
    assert_grads_close(g_fused, np_gradients(net, x, y_matrix, cost)[0])


# -- the checker itself -------------------------------------------------------------------------------
def test_check_gradients_catches_a_wrong_gradient(monkeypatch):
    net, x, y, _ = make_problem("tanh", "softmax", "crossentropy")
    assert dn.check_gradients(net, x, y) < 1e-6
    right = net.gradients

    def wrong(*args, **kwargs):
        g = right(*args, **kwargs)
        return [(dw, db * 1.01) for dw, db in g]

    monkeypatch.setattr(net, "gradients", wrong)
    assert dn.check_gradients(net, x, y) > 1e-3


def test_check_gradients_samples_large_parameters():
    from densenn.nn.gradcheck import numerical_gradients

    net = dn.Network(30, [dn.Dense(20, "tanh"), dn.Dense(2, "softmax")], dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(5, 30))
    y = np.array([0, 1, 1, 0, 1])
    grads, masks = numerical_gradients(net, x, y, max_entries=50)
    assert masks[0][0].sum() == 50 and masks[0][1].all() and masks[1][0].all()
    assert grads[0][0].shape == (20, 30)
    assert dn.check_gradients(net, x, y, max_entries=50) < 1e-6
