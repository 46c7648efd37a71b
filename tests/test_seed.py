"""The seed article's examples, reproduced with densenn's low-level layers.

The seed (``../shared/seed``) writes matrices column-major, one sample per
column, and subtracts its bias (``rk! -1.0 b ones``: z = w·x − b). densenn is
row-major ``(samples, features)`` and adds its bias, so the seed's column-major
data is read here as the transposed row-major array (no copy in spirit, a
``reshape`` + ``.T`` in the test) and ``b`` is passed negated.
"""
from __future__ import annotations

import numpy as np
import pytest

import densenn as dn
from densenn.backend import get_engine
from densenn.backend.cpu.fused import AVAILABLE as NUMBA
from densenn.nn.activation import ActivationFn, get_activation

ENGINES = ["cpu:numpy"] + (["cpu:numba"] if NUMBA else [])
DTYPES = [np.float32, np.float64]


def column_major(values, rows, cols):
    """The seed's ``(ge factory rows cols values)``: values fill columns first."""
    m = np.asarray(values, dtype=np.float64).reshape(cols, rows).T.copy()
    m.setflags(write=False)      # module constants: a test must never write into them
    return m


# -- the seed's two-layer example -------------------------------------------------------
# x: 2 features × 2 samples, both samples (0.3, 0.9)
SEED_X = column_major([0.3, 0.9, 0.3, 0.9], 2, 2)            # features × samples
SEED_W1 = column_major([0.3, 0.1, 0.9, 0.0, 0.6, 2.0, 3.7, 1.0], 4, 2)
SEED_B1 = np.array([0.7, 0.2, 1.1, 2.0])
SEED_W2 = column_major([0.75, 0.15, 0.22, 0.33], 1, 4)
SEED_B2 = np.array([0.3])
SEED_OUTPUT = 0.4352126  # the seed prints 0.44


def seed_reference():
    """The seed's forward pass in float64 NumPy, its own convention (z = w·x − b), column-major."""
    z1 = SEED_W1 @ SEED_X - SEED_B1[:, None]
    a1 = np.tanh(z1)
    z2 = SEED_W2 @ a1 - SEED_B2[:, None]
    a2 = 1.0 / (1.0 + np.exp(-z2))
    return z1, a1, z2, a2


def seed_layers(engine, dtype):
    """The seed's layer-1 (tanh 2→4) and layer-2 (sigmoid 4→1), with −b for densenn's +b."""
    e = get_engine(engine)
    l1 = dn.DenseInference(e, 2, 4, "tanh", dtype,
                           w=e.to_engine(SEED_W1.copy(), dtype),
                           b=e.to_engine(-SEED_B1, dtype))
    l2 = dn.DenseInference(e, 4, 1, "sigmoid", dtype,
                           w=e.to_engine(SEED_W2.copy(), dtype),
                           b=e.to_engine(-SEED_B2, dtype))
    return e, l1, l2


def test_reference_reproduces_the_seed():
    *_, a2 = seed_reference()
    np.testing.assert_allclose(a2, [[SEED_OUTPUT, SEED_OUTPUT]], rtol=1e-6)
    assert np.round(a2, 2).tolist() == [[0.44, 0.44]]


def test_row_major_layout_is_the_seeds_column_major_transposed():
    x = SEED_X.T.copy()          # (samples, features)
    assert x.tolist() == [[0.3, 0.9], [0.3, 0.9]]
    # the seed's column-major data, read in memory order, is this C-ordered array
    assert x.ravel().tolist() == [0.3, 0.9, 0.3, 0.9]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_layers_give_the_seeds_output(engine, dtype):
    e, l1, l2 = seed_layers(engine, dtype)
    x = e.to_engine(SEED_X.T.copy(), dtype)
    out = e.to_host(l2(l1(x)))
    assert out.shape == (2, 1) and out.dtype == dtype
    _, a1, _, a2 = seed_reference()
    np.testing.assert_allclose(e.to_host(l1(x)), a1.T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out, a2.T, rtol=1e-6)
    np.testing.assert_allclose(out, SEED_OUTPUT, rtol=1e-6)
    assert np.round(out.astype(np.float64), 2).ravel().tolist() == [0.44, 0.44]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_layers_forward_and_backward(engine, dtype):
    e, l1, l2 = seed_layers(engine, dtype)
    x = e.to_engine(SEED_X.T.copy(), dtype)
    x_before = e.to_host(x)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    with dn.DenseTraining(l1, x) as t1, dn.DenseTraining.after(l2, t1) as t2:
        assert t2.x is t1.a                      # layer 2 reads layer 1's output buffer
        assert t1.w is l1.w and t2.b is l2.b     # weights shared, not copied
        t1.forward()
        t2.forward()
        z1, a1, z2, a2 = seed_reference()
        np.testing.assert_allclose(e.to_host(t1.z), z1.T, **tol)
        np.testing.assert_allclose(e.to_host(t1.a), a1.T, **tol)
        np.testing.assert_allclose(e.to_host(t2.z), z2.T, **tol)
        np.testing.assert_allclose(e.to_host(t2.a), a2.T, **tol)
        np.testing.assert_allclose(e.to_host(t2.a), SEED_OUTPUT, rtol=1e-6)

        # the seed's backward: the signal in the last layer's a is its own output
        # (no cost yet), delta² = σ'(z²) ∘ a², then wᵀδ goes down into layer 1's a.
        sig2 = 1.0 / (1.0 + np.exp(-z2.T))
        delta2 = sig2 * (1.0 - sig2) * a2.T                    # (2 samples, 1)
        signal1 = delta2 @ SEED_W2                             # (2, 4), written into t1.a
        delta1 = (1.0 / np.cosh(z1.T) ** 2) * signal1          # tanh' = 1/cosh², the seed's formula
        t2.backward()
        np.testing.assert_allclose(e.to_host(t2.z), delta2, **tol)
        np.testing.assert_allclose(e.to_host(t1.a), signal1, **tol)
        np.testing.assert_allclose(e.to_host(t2.dw), delta2.T @ a1.T, **tol)
        np.testing.assert_allclose(e.to_host(t2.db), delta2.sum(axis=0), **tol)
        t1.backward(propagate=False)
        np.testing.assert_allclose(e.to_host(t1.z), delta1, **tol)
        np.testing.assert_allclose(e.to_host(t1.dw), delta1.T @ SEED_X.T, **tol)
        np.testing.assert_allclose(e.to_host(t1.db), delta1.sum(axis=0), **tol)
        # the seed reads the output after the backward pass: still 0.44
        np.testing.assert_allclose(e.to_host(t2.a), SEED_OUTPUT, rtol=1e-6)
        # the first layer's input is the user's batch and is never written
        np.testing.assert_array_equal(e.to_host(x), x_before)
    assert t1.z is None and t2.z is None and t1.dw is None      # released on exit
    assert l1.w is not None                                      # the weights stay with the inference layer


def test_training_layer_delta_is_prime_times_signal():
    """The seed's one-liner ``(mul! (prime activ-fn z) a)`` against prime computed separately."""
    e, l1, l2 = seed_layers("cpu:numpy", np.float64)
    x = SEED_X.T.copy()
    t1 = dn.DenseTraining(l1, x)
    t2 = dn.DenseTraining.after(l2, t1)
    t1.forward()
    t2.forward()
    z2, a2 = t2.z.copy(), t2.a.copy()
    prime = z2.copy()
    t2.activ_fn.prime(prime)                                      # overwrites its argument
    t2.backward(propagate=False)
    np.testing.assert_allclose(t2.z, prime * a2, rtol=1e-14)


# -- the seed's activation table ----------------------------------------------------------
# (fge 2 3 [-0.6 0 0.2 0.5 0.7 1]) is, column-major, [[-0.6 0.2 0.7], [0 0.5 1]]
SEED_Z = column_major([-0.6, 0, 0.2, 0.5, 0.7, 1], 2, 3)
SEED_SIGMOID = [[0.35, 0.55, 0.67], [0.50, 0.62, 0.73]]
SEED_SIGMOID_PRIME = [[0.23, 0.25, 0.22], [0.25, 0.24, 0.20]]


def test_seed_matrix_is_column_major():
    assert SEED_Z.tolist() == [[-0.6, 0.2, 0.7], [0.0, 0.5, 1.0]]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_seed_sigmoid_table(engine, dtype):
    e = get_engine(engine)
    # densenn's row-major (samples, features) array holding the seed's 2×3 matrix
    z = e.to_engine(SEED_Z.T.copy(), dtype)
    a = e.empty(z.shape, dtype)
    fn = ActivationFn.for_layer(get_activation("sigmoid"), e, 3, 2, dtype)
    fn.activ(z, a)
    np.testing.assert_array_equal(e.to_host(z), SEED_Z.T.astype(dtype))   # activ keeps z
    fn.prime(z)                                                           # prime overwrites z
    # back to the seed's layout, in float64 so that rounding to 2 decimals compares exactly
    function, derivative = e.to_host(a).T.astype(np.float64), e.to_host(z).T.astype(np.float64)
    np.testing.assert_allclose(function, SEED_SIGMOID, atol=0.005 + 1e-7)
    np.testing.assert_allclose(derivative, SEED_SIGMOID_PRIME, atol=0.005 + 1e-7)
    assert np.round(function, 2).tolist() == SEED_SIGMOID
    assert np.round(derivative, 2).tolist() == SEED_SIGMOID_PRIME
    exact = 1.0 / (1.0 + np.exp(-SEED_Z))
    np.testing.assert_allclose(function, exact, rtol=1e-6)
    np.testing.assert_allclose(derivative, exact * (1 - exact), rtol=1e-5)


def test_seed_tanh_derivative_formula():
    """The seed's tanh' = 1/cosh²(z); densenn's 1 - tanh²(z) is the same function."""
    z = SEED_Z.T.copy()
    fn = ActivationFn.for_layer(get_activation("tanh"), get_engine("cpu:numpy"), 3, 2, np.float64)
    fn.prime(z)
    np.testing.assert_allclose(z, 1.0 / np.cosh(SEED_Z.T) ** 2, rtol=1e-14)
