"""Activations: activ/prime/delta against independent float64 NumPy references.

Every activation in ``densenn.nn.activation.ACTIVATIONS`` (plus non-default
parameters where an activation has one) is checked

* through its NumPy kernels (``np_activ``/``np_prime``/``np_delta``, with and
  without working memory),
* through the CPU engines (``cpu:numpy``, and the fused Numba kernels where
  Numba is installed), via ``ActivationFn`` and ``engine.bias_activ``,
* against central differences of ``activ`` (the derivative is really f'),
* for the seed's contract: ``activ`` keeps z, ``prime`` and ``delta`` overwrite z,
* at |z| up to 1e4 in float32 and float64: no RuntimeWarning, no NaN/inf.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import densenn as dn
from densenn.backend import get_engine
from densenn.backend.cpu import fused as cpu_fused
from densenn.backend.cpu.fused import AVAILABLE as NUMBA
from densenn.nn.activation import ACTIVATIONS, ELU, ActivationFn, LeakyReLU, get_activation
from test_activations_modern import NAMES as MODERN  # the new activations' references
from test_activations_modern import ref_df, ref_f

ENGINES = ["cpu:numpy"] + (["cpu:numba"] if NUMBA else [])
DTYPES = [np.float32, np.float64]

SPECS = [cls() for cls in ACTIVATIONS.values()] + [LeakyReLU(0.2), ELU(0.5)]
SPEC_IDS = [repr(s) for s in SPECS]
ELEMENTWISE = [s for s in SPECS if s.elementwise]
ELEMENTWISE_IDS = [repr(s) for s in ELEMENTWISE]


# -- independent float64 references -----------------------------------------------------
def _sigmoid(z):
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_activ(spec, z):
    z = np.asarray(z, dtype=np.float64)
    p = spec.param
    name = spec.name
    if name == "sigmoid":
        return _sigmoid(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, p * z)
    if name == "elu":
        with np.errstate(over="ignore"):
            return np.where(z > 0, z, p * (np.exp(np.minimum(z, 0.0)) - 1.0))
    if name == "softplus":
        # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|)
        return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
    if name == "linear":
        return z.copy()
    if name == "softmax":
        return _softmax(z)
    if name in MODERN:
        return ref_f(name, z)
    raise AssertionError(f"no reference for {name}")


def ref_prime(spec, z):
    """f'(z); for softmax the diagonal of its Jacobian, s(1 - s)."""
    z = np.asarray(z, dtype=np.float64)
    p = spec.param
    name = spec.name
    if name == "sigmoid":
        s = _sigmoid(z)
        return s * (1.0 - s)
    if name == "tanh":
        with np.errstate(over="ignore"):
            return 1.0 / np.cosh(z) ** 2          # the seed's form
    if name == "relu":
        return np.where(z > 0, 1.0, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, p)
    if name == "elu":
        return np.where(z > 0, 1.0, p * np.exp(np.minimum(z, 0.0)))
    if name == "softplus":
        return _sigmoid(z)
    if name == "linear":
        return np.ones_like(z)
    if name == "softmax":
        s = _softmax(z)
        return s * (1.0 - s)
    if name in MODERN:
        return ref_df(name, z)
    raise AssertionError(f"no reference for {name}")


def ref_delta(spec, z, g):
    """∂(Σ g∘f(z))/∂z: f'(z) ∘ g elementwise; the full Jacobian-vector product for softmax."""
    if spec.name == "softmax":
        s = _softmax(np.asarray(z, dtype=np.float64))
        # J_ij = s_i (δ_ij - s_j), symmetric, so Jᵀg = s ∘ (g - Σ_j s_j g_j)
        return s * (g - (s * g).sum(axis=1, keepdims=True))
    return ref_prime(spec, z) * g


def sample_z(shape=(6, 7), seed=0, low=-4.0, high=4.0, away_from_zero=1e-2):
    """Random z, kept away from 0 where ReLU-like activations have their kink."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(low, high, size=shape)
    z[np.abs(z) < away_from_zero] = away_from_zero
    return z


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def dev(e, host, dtype):
    """An engine copy of ``host`` (``to_engine`` may share memory on the CPU engine)."""
    return e.to_engine(np.array(host, dtype=np.float64, copy=True), dtype)


def bound(spec, engine, dtype, batch, n_out):
    return ActivationFn.for_layer(spec, get_engine(engine), batch, n_out, dtype)


# -- values against the references ---------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_numpy_kernels_match_reference(spec, dtype):
    z64 = sample_z()
    g64 = sample_z(seed=1)
    for work in ("none", "bound"):
        w = None if work == "none" else ActivationFn.for_layer(spec, get_engine("cpu:numpy"), *z64.shape,
                                                                 dtype).work
        z = z64.astype(dtype)
        a = np.empty_like(z)
        assert spec.np_activ(z, a, w) is a
        np.testing.assert_array_equal(z, z64.astype(dtype))      # activ keeps z
        np.testing.assert_allclose(a, ref_activ(spec, z64), **tol(dtype))
        assert spec.np_prime(z, w) is z                         # prime writes z
        np.testing.assert_allclose(z, ref_prime(spec, z64), **tol(dtype))
        z = z64.astype(dtype)
        g = g64.astype(dtype)
        assert spec.np_delta(z, g, w) is z                      # delta writes z
        np.testing.assert_allclose(z, ref_delta(spec, z64, g64), **tol(dtype))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_engine_activ_prime_delta_match_reference(spec, dtype, engine):
    e = get_engine(engine)
    z64, g64 = sample_z(), sample_z(seed=1)
    b64 = np.random.default_rng(2).uniform(-0.5, 0.5, z64.shape[1])
    fn = bound(spec, engine, dtype, *z64.shape)

    z = dev(e, z64, dtype)
    a = e.empty(z.shape, dtype)
    assert fn.activ(z, a) is a
    np.testing.assert_array_equal(e.to_host(z), z64.astype(dtype))   # z kept
    np.testing.assert_allclose(e.to_host(a), ref_activ(spec, z64), **tol(dtype))

    # the forward step after the GEMM: z += b, a = f(z)
    zb = z64 + b64
    zb[np.abs(zb) < 1e-2] = 1e-2
    b = dev(e, b64, dtype)
    z = dev(e, zb - b64, dtype)
    spec.bias_activ(e, z, b, a, fn.work)
    np.testing.assert_allclose(e.to_host(z), zb, **tol(dtype))
    np.testing.assert_allclose(e.to_host(a), ref_activ(spec, zb), **tol(dtype))

    z = dev(e, z64, dtype)
    assert fn.prime(z) is z
    np.testing.assert_allclose(e.to_host(z), ref_prime(spec, z64), **tol(dtype))

    z = dev(e, z64, dtype)
    g = dev(e, g64, dtype)
    assert fn.delta(z, g) is z
    np.testing.assert_allclose(e.to_host(z), ref_delta(spec, z64, g64), **tol(dtype))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_partial_batch_view(spec, engine):
    """``ActivationFn.rows(n)`` works on the first n rows with the same working memory."""
    e = get_engine(engine)
    z64, g64 = sample_z((8, 5)), sample_z((8, 5), seed=3)
    fn = bound(spec, engine, np.float64, 8, 5).rows(3)
    z = z64[:3].copy()
    a = np.empty_like(z)
    fn.activ(z, a)
    np.testing.assert_allclose(a, ref_activ(spec, z64[:3]), rtol=1e-12, atol=1e-13)
    g = g64[:3].copy()
    fn.delta(z, g)
    np.testing.assert_allclose(z, ref_delta(spec, z64[:3], g64[:3]), rtol=1e-12, atol=1e-13)
    del e


def test_working_memory_shapes():
    e = get_engine("cpu:numpy")
    for spec in SPECS:
        fn = ActivationFn.for_layer(spec, e, 4, 3, np.float32)
        expected = {None: None, "full": (4, 3), "row": (4, 1)}[spec.work_kind]
        assert (fn.work is None) == (expected is None)
        if expected is not None:
            assert fn.work.shape == expected and fn.work.dtype == np.float32
            assert fn.nbytes() == fn.work.nbytes
            assert fn.rows(2).work.shape[0] == 2
        fn.release()
        assert fn.work is None and fn.nbytes() == 0
    assert get_activation("tanh").work_kind is None           # the seed: tanh needs no work
    assert get_activation("softmax").elementwise is False


# -- the derivative really is f' ----------------------------------------------------------
@pytest.mark.parametrize("spec", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_prime_matches_central_differences(spec):
    z = sample_z((5, 9), seed=4, away_from_zero=1e-3)
    h = 1e-6
    up, down = np.empty_like(z), np.empty_like(z)
    spec.np_activ(z + h, up)
    spec.np_activ(z - h, down)
    numeric = (up - down) / (2 * h)
    prime = z.copy()
    spec.np_prime(prime)
    np.testing.assert_allclose(prime, numeric, rtol=1e-7, atol=1e-8)


def _softmax_jacobian_numeric(spec, zrow, h=1e-6):
    """J[i, j] = ∂s_j/∂z_i by central differences of densenn's own softmax."""
    n = zrow.size
    jac = np.empty((n, n))
    up, down = np.empty((1, n)), np.empty((1, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        spec.np_activ((zrow + e)[None, :], up)
        spec.np_activ((zrow - e)[None, :], down)
        jac[i] = (up[0] - down[0]) / (2 * h)
    return jac


@pytest.mark.parametrize("engine", ENGINES)
def test_softmax_delta_is_the_jacobian_vector_product(engine):
    spec = get_activation("softmax")
    z64, g64 = sample_z((4, 6), seed=5), sample_z((4, 6), seed=6)
    fn = bound(spec, engine, np.float64, 4, 6)
    z, g = z64.copy(), g64.copy()
    fn.delta(z, g)
    for r in range(4):
        jac = _softmax_jacobian_numeric(spec, z64[r])
        np.testing.assert_allclose(jac, jac.T, atol=1e-8)                       # symmetric
        np.testing.assert_allclose(z[r], jac @ g64[r], rtol=1e-7, atol=1e-8)    # delta = Jᵀg
        prime = z64[r:r + 1].copy()
        fn.rows(1).prime(prime)
        np.testing.assert_allclose(prime[0], np.diag(jac), rtol=1e-7, atol=1e-8)  # prime = diag J


def test_scalar_kernels_match_reference():
    """The loops made from ``f``/``df`` (what Numba compiles, run here as plain Python) agree
    with the references."""
    pts = np.concatenate([sample_z((1, 40), seed=7).ravel(), [-1e4, -50.0, 50.0, 1e4]])
    none = np.empty(0)
    for spec in ELEMENTWISE:
        coef = np.array([spec.param])
        f, fp = np.empty_like(pts), pts.copy()
        with np.errstate(over="ignore"):
            cpu_fused.python_kernel(spec.ops.activ, np.float64, "flat")(pts, f, coef, none)
            cpu_fused.python_kernel(spec.ops.prime, np.float64, "flat")(fp, coef, none)
        np.testing.assert_allclose(f, ref_activ(spec, pts), rtol=1e-12, atol=1e-13, err_msg=repr(spec))
        np.testing.assert_allclose(fp, ref_prime(spec, pts), rtol=1e-12, atol=1e-13, err_msg=repr(spec))
        assert all(math.isfinite(v) for v in np.concatenate([f, fp]))


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name in ("relu", "leaky_relu", "linear")],
                         ids=lambda s: repr(s))
def test_engines_agree_at_the_kink(spec):
    """The fused kernels and the NumPy kernels take the same one-sided derivative at z = 0."""
    z0 = np.array([[0.0, -0.0, 1e-30, -1e-30, 2.0, -2.0]])
    outs = []
    for engine in ENGINES:
        fn = bound(spec, engine, np.float64, *z0.shape)
        z, g = z0.copy(), np.full_like(z0, 3.0)
        fn.delta(z, g)
        outs.append(z)
        np.testing.assert_allclose(z[0, 0] / 3.0, ref_prime(spec, 0.0))
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])


# -- extreme inputs -------------------------------------------------------------------------
EXTREME = np.array([[-1e4, -1e3, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e3, 1e4],
                    [1e4, 1e4, 1e4, -1e4, -1e4, -1e4, 0.5, -0.5, 88.0, -88.0, 710.0],
                    [-1e4] * 11,
                    [1e4] * 11])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_extreme_inputs_give_no_warning_and_no_nan(spec, dtype, engine):
    e = get_engine(engine)
    fn = bound(spec, engine, dtype, *EXTREME.shape)
    zero_bias = e.zeros((EXTREME.shape[1],), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # any RuntimeWarning (overflow, invalid) fails
        z = dev(e, EXTREME, dtype)
        a = e.empty(z.shape, dtype)
        fn.activ(z, a)
        a1 = e.to_host(a)
        spec.bias_activ(e, z, zero_bias, a, fn.work)
        a2 = e.to_host(a)
        fn.prime(z)
        p = e.to_host(z)
        z = dev(e, EXTREME, dtype)
        g = dev(e, np.ones_like(EXTREME), dtype)
        fn.delta(z, g)
        d = e.to_host(z)
    for name, arr in (("activ", a1), ("bias_activ", a2), ("prime", p), ("delta", d)):
        assert np.isfinite(arr).all(), f"{spec!r} {name} gave NaN/inf at |z| <= 1e4 in {np.dtype(dtype)}: {arr}"
    # the values themselves: relative accuracy for f, absolute (machine epsilon) for f',
    # whose 1 - tanh² form rounds saturated derivatives (~1e-26) to 0
    z_exact = EXTREME.astype(dtype).astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a1, ref_activ(spec, z_exact), rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(a2, ref_activ(spec, z_exact), rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(p, ref_prime(spec, z_exact), rtol=rtol, atol=np.finfo(dtype).eps)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_sum_to_one(engine, dtype):
    e = get_engine(engine)
    spec = get_activation("softmax")
    rng = np.random.default_rng(8)
    zs = [rng.normal(0, 3, size=(16, 10)), EXTREME, np.zeros((3, 4)), rng.normal(0, 3, size=(5, 1))]
    for z64 in zs:
        fn = bound(spec, engine, dtype, *z64.shape)
        z = dev(e, z64, dtype)
        a = e.empty(z.shape, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fn.activ(z, a)
        s = e.to_host(a).astype(np.float64)
        assert (s >= 0).all() and (s <= 1).all()
        np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-6 if dtype == np.float32 else 1e-14)
        np.testing.assert_allclose(s, _softmax(z64.astype(dtype).astype(np.float64)),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-30)


def test_softmax_is_per_sample():
    """Each row is its own distribution: shifting one row does not change the others."""
    spec = get_activation("softmax")
    z = sample_z((3, 4))
    a1, a2 = np.empty_like(z), np.empty_like(z)
    spec.np_activ(z, a1)
    z2 = z.copy()
    z2[1] += 100.0
    spec.np_activ(z2, a2)
    np.testing.assert_allclose(a1, a2, rtol=1e-12)     # softmax(z + c) = softmax(z)


# -- construction and errors --------------------------------------------------------------------
def test_get_activation_accepts_names_configs_and_objects():
    for name, cls in ACTIVATIONS.items():
        act = get_activation(name)
        assert type(act) is cls and act.name == name
        assert get_activation(act) is act
        assert get_activation(act.config()) == act
    leaky = get_activation({"name": "leaky_relu", "param": 0.2})
    assert leaky == LeakyReLU(0.2) and leaky != LeakyReLU(0.01)
    assert get_activation(ELU(0.5).config()) == ELU(0.5)
    assert hash(LeakyReLU(0.2)) == hash(get_activation({"name": "leaky_relu", "param": 0.2}))


@pytest.mark.parametrize("bad", ["swish", "", "Relu ", "softmax2", None, 3, 1.5, ["relu"],
                                 {"name": "gelu_erf_typo"}, {}])
def test_get_activation_bad_name_raises_naming_the_options(bad):
    with pytest.raises(dn.DensennError) as info:
        get_activation(bad)
    message = str(info.value)
    assert "activation" in message
    for name in ACTIVATIONS:
        assert name in message, f"{name!r} missing from: {message}"


@pytest.mark.parametrize("make", [lambda: LeakyReLU(1.0), lambda: LeakyReLU(-0.1), lambda: LeakyReLU("a"),
                                  lambda: ELU(0.0), lambda: ELU(-1.0), lambda: ELU(float("nan")),
                                  lambda: ELU(float("inf"))])
def test_bad_activation_parameters_raise(make):
    with pytest.raises(dn.DensennError):
        make()


def test_dense_spec_checks_its_activation():
    with pytest.raises(dn.DensennError, match="activation"):
        dn.Dense(4, "swish")
