"""GELU (exact and tanh forms), SiLU, Mish and SELU (densenn.nn.activations_modern).

* values of f and f' against independent float64 formulas (scipy's erf, NumPy's tanh,
  scipy's expit, logaddexp), and f' against central differences of f, for the NumPy
  kernels and for the expressions the GPU engines and Numba compile (run as Python here);
  from -1e4 to 1e4 with every warning an error; NaN in → NaN out, ±inf → the limits;
* on every engine available here: activ, bias_activ, prime, delta (and delta's ∇b)
  against the float64 references;
* backprop through a hidden layer of each against finite differences and an independent
  NumPy backprop, in float64, on every engine;
* SELU's default initialiser is LeCun normal; the smooth ReLUs get He's;
* registration: names, configs, model files, the CLI, the docs; unknown names still fail;
* the NumPy kernels and the CPU engine's passes allocate nothing.
"""
from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import ENGINE_NAMES, load_engine
from scipy.special import erf, expit

import densenn as dn
from densenn.backend.cpu import fused as cpu_fused
from densenn.nn.activation import ACTIVATIONS, ActivationFn, get_activation
from densenn.nn.init import INITIALIZERS, default_init, init_weights

NAMES = ["gelu", "gelu_tanh", "silu", "mish", "selu"]
DTYPES = [np.float32, np.float64]
LAMBDA, ALPHA = 1.0507009873554805, 1.6732632423543772
C = math.sqrt(2.0 / math.pi)

pytestmark = pytest.mark.filterwarnings("error")     # any RuntimeWarning (overflow, invalid) fails


# -- independent float64 references ----------------------------------------------------------
def ref_f(name, z):
    z = np.asarray(z, dtype=np.float64)
    if name == "gelu":
        return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * z * (1.0 + np.tanh(C * (z + 0.044715 * z ** 3)))
    if name == "silu":
        return z * expit(z)
    if name == "mish":
        return z * np.tanh(np.logaddexp(0.0, z))
    if name == "selu":
        return np.where(z > 0, LAMBDA * z, LAMBDA * ALPHA * np.expm1(np.minimum(z, 0.0)))
    raise AssertionError(name)


def ref_df(name, z):
    z = np.asarray(z, dtype=np.float64)
    if name == "gelu":
        return 0.5 * (1.0 + erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    if name == "gelu_tanh":
        t = np.tanh(C * (z + 0.044715 * z ** 3))
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * C * (1.0 + 3 * 0.044715 * z * z)
    if name == "silu":
        return expit(z) * (1.0 + z * expit(-z))
    if name == "mish":
        sp = np.logaddexp(0.0, z)
        with np.errstate(over="ignore"):              # cosh(softplus(1e4)) = inf: sech² = 0
            sech2 = 1.0 / np.cosh(sp) ** 2
        return np.tanh(sp) + z * expit(z) * sech2
    if name == "selu":
        return np.where(z > 0, LAMBDA, LAMBDA * ALPHA * np.exp(np.minimum(z, 0.0)))
    raise AssertionError(name)


#: f(-inf), f(+inf), f'(-inf), f'(+inf)
LIMITS = {"gelu": (0.0, np.inf, 0.0, 1.0), "gelu_tanh": (0.0, np.inf, 0.0, 1.0), "silu": (0.0, np.inf, 0.0, 1.0),
          "mish": (0.0, np.inf, 0.0, 1.0), "selu": (-LAMBDA * ALPHA, np.inf, 0.0, LAMBDA)}

BIG = [1e4, 1e3, 745.0, 710.0, 100.0, 88.0, 50.0, 45.0, 40.0, 35.0, 30.0, 25.0, 20.0, 15.0, 10.0]
GRID = np.concatenate([np.linspace(-8.0, 8.0, 321), -np.array(BIG), BIG, [1e-8, -1e-8, 1e-300, -1e-300]])
#: away from SELU's kink at 0, for central differences
SMOOTH = np.concatenate([np.linspace(-8.0, -0.05, 80), np.linspace(0.05, 8.0, 80), [-12.0, -20.0, 12.0, 20.0]])
TOL64 = dict(rtol=1e-12, atol=1e-14)


def spec(name):
    return get_activation(name)


def np_forms(act, z, work):
    """(f, f', f'·g with g = 2) through the NumPy kernels, on copies of float64 ``z``."""
    a = np.empty_like(z)
    zc = z.copy()
    assert act.np_activ(zc, a, None if work is None else np.empty_like(z)) is a
    np.testing.assert_array_equal(zc, z)                      # activ keeps z
    p = z.copy()
    assert act.np_prime(p, None if work is None else np.empty_like(z)) is p
    d = z.copy()
    assert act.np_delta(d, np.full_like(z, 2.0), None if work is None else np.empty_like(z)) is d
    return a, p, d


def expression_forms(act, z, dtype=np.float64):
    """(f, f', f'·g with g = 2) through the loops made from ``f``/``df`` (what Numba compiles;
    the GPU engines compile the same expressions to C), run as plain Python."""
    z = np.asarray(z, dtype=dtype)
    coef, none = np.array([act.param], dtype), np.empty(0, dtype)
    f, p, d = np.empty_like(z), z.copy(), z.copy()
    cpu_fused.python_kernel(act.ops.activ, dtype, "flat")(z, f, coef, none)
    cpu_fused.python_kernel(act.ops.prime, dtype, "flat")(p, coef, none)
    cpu_fused.python_kernel(act.ops.delta, dtype, "flat")(d, np.full_like(z, 2.0), coef, none)
    return f, p, d


# -- (a) values, derivatives, extremes -------------------------------------------------------------
@pytest.mark.parametrize("work", ["work", "no-work"])
@pytest.mark.parametrize("name", NAMES)
def test_numpy_kernels_match_the_references(name, work):
    z = GRID.reshape(-1, 1).repeat(2, axis=1)                 # 2-D, as a layer's z
    f, p, d = np_forms(spec(name), z, work == "work")
    np.testing.assert_allclose(f, ref_f(name, z), **TOL64, err_msg="f")
    np.testing.assert_allclose(p, ref_df(name, z), **TOL64, err_msg="f'")
    np.testing.assert_allclose(d, 2.0 * ref_df(name, z), **TOL64, err_msg="delta")


@pytest.mark.parametrize("name", NAMES)
def test_expressions_match_the_references(name):
    f, p, d = expression_forms(spec(name), GRID)
    np.testing.assert_allclose(f, ref_f(name, GRID), **TOL64, err_msg="f")
    np.testing.assert_allclose(p, ref_df(name, GRID), **TOL64, err_msg="f'")
    np.testing.assert_allclose(d, 2.0 * ref_df(name, GRID), **TOL64, err_msg="delta")


@pytest.mark.parametrize("name", NAMES)
def test_float32_expressions_match_the_references(name):
    z32 = GRID.astype(np.float32)
    f, p, _ = expression_forms(spec(name), z32, np.float32)
    assert f.dtype == np.float32 and p.dtype == np.float32    # no promotion to float64 on the way
    z = z32.astype(np.float64)
    np.testing.assert_allclose(f, ref_f(name, z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p, ref_df(name, z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_derivative_is_the_derivative(name):
    """f' against central differences of the reference f, and of densenn's own f."""
    h = 1e-6
    numeric = (ref_f(name, SMOOTH + h) - ref_f(name, SMOOTH - h)) / (2 * h)
    act = spec(name)
    up, down = np.empty_like(SMOOTH), np.empty_like(SMOOTH)
    act.np_activ(SMOOTH + h, up, np.empty_like(SMOOTH))
    act.np_activ(SMOOTH - h, down, np.empty_like(SMOOTH))
    own = (up - down) / (2 * h)
    _, p_np, _ = np_forms(act, SMOOTH, True)
    _, p_expr, _ = expression_forms(act, SMOOTH)
    for what, p in (("numpy", p_np), ("expression", p_expr)):
        np.testing.assert_allclose(p, numeric, rtol=1e-7, atol=1e-8, err_msg=f"{what} f' vs the reference")
        np.testing.assert_allclose(p, own, rtol=1e-7, atol=1e-8, err_msg=f"{what} f' vs densenn's f")


@pytest.mark.parametrize("name", NAMES)
def test_known_values(name):
    """Points pinned by hand (or by the definitions' closed forms), not by the references."""
    act = spec(name)
    z = np.array([0.0, 1.0, -1.0])
    f, p, _ = np_forms(act, z, True)
    expected_f = {"gelu": [0.0, 0.8413447460685429, -0.15865525393145707],
                  "gelu_tanh": [0.0, 0.8411919906082768, -0.15880800939172324],
                  "silu": [0.0, 0.7310585786300049, -0.2689414213699951],
                  "mish": [0.0, 0.8650983882673103, -0.3034014613741089],
                  "selu": [0.0, LAMBDA, LAMBDA * ALPHA * (math.exp(-1.0) - 1.0)]}[name]
    np.testing.assert_allclose(f, expected_f, rtol=1e-13, atol=1e-15)
    # f'(0): ½ for the three z·g(z) with g(0) = ½; mish: tanh(log 2) = 0.6; selu: λα (z > 0 is λ)
    assert p[0] == pytest.approx({"gelu": 0.5, "gelu_tanh": 0.5, "silu": 0.5, "mish": 0.6,
                                  "selu": LAMBDA * ALPHA}[name], rel=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates_and_infinities_give_the_limits(name):
    act = spec(name)
    z = np.array([np.nan, -np.inf, np.inf, -1e4, 1e4])
    f_lo, f_hi, p_lo, p_hi = LIMITS[name]
    for what, (f, p, d) in (("numpy", np_forms(act, z.reshape(1, -1), True)),
                            ("numpy, no work", np_forms(act, z.reshape(1, -1), False)),
                            ("expression", expression_forms(act, z))):
        f, p, d = f.ravel(), p.ravel(), d.ravel()
        assert np.isnan(f[0]) and np.isnan(p[0]) and np.isnan(d[0]), f"{what}: NaN in must give NaN out"
        np.testing.assert_array_equal(f[1:3], [f_lo, f_hi], err_msg=f"{what}: f(±inf)")
        np.testing.assert_array_equal(p[1:3], [p_lo, p_hi], err_msg=f"{what}: f'(±inf)")
        np.testing.assert_array_equal(d[1:3], [2 * p_lo, 2 * p_hi], err_msg=f"{what}: delta(±inf)")
        np.testing.assert_allclose(f[3:], [f_lo, LAMBDA * 1e4 if name == "selu" else 1e4], rtol=1e-15,
                                   err_msg=f"{what}: f(±1e4)")
        np.testing.assert_array_equal(p[3:], [p_lo, p_hi], err_msg=f"{what}: f'(±1e4) is saturated exactly")


def test_the_tolerance_catches_a_small_error():
    """The checks above can fail: f off by 2e-12 relative (a constant a few digits short) is caught."""
    act = spec("selu")
    a = np.empty_like(GRID)
    act.np_activ(GRID, a, np.empty_like(GRID))
    wrong = ref_f("selu", GRID) * (1 + 2e-12)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(a, wrong, **TOL64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_prime_kernel_in_pieces(name, dtype):
    """np_prime runs the delta kernel in pieces of z that borrow the working memory: odd sizes,
    a single element, a row of a larger buffer and a non-contiguous view all give f'."""
    act = spec(name)
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 2), (3, 5), (7, 1), (4, 33)]:
        z64 = rng.normal(0, 4, shape)
        z = z64.astype(dtype)
        act.np_prime(z, np.full(shape, np.nan, dtype))        # the work's old contents must not matter
        np.testing.assert_allclose(z, ref_df(name, z64.astype(dtype)), rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-6 if dtype == np.float32 else 1e-14, err_msg=str(shape))
    buf = rng.normal(0, 4, (6, 8))
    view = buf[:, ::2].copy(order="F")[:, :3]                  # not C-contiguous
    want = ref_df(name, view)
    act.np_prime(view, np.empty(view.shape))
    np.testing.assert_allclose(view, want, **TOL64)


# -- (b) every engine against the references ----------------------------------------------------------
def engine_z(dtype):
    """Normal values (std 3) with the extremes mixed in."""
    z = np.random.default_rng(0).normal(0, 3.0, (8, 13))
    z[0, :10] = [1e4, -1e4, 50.0, -50.0, 30.0, -30.0, 0.0, 1e-3, -1e-3, 6.0]
    z[1, :4] = [-6.0, 12.0, -12.0, 25.0]
    return z.astype(dtype)


def engine_tol(dtype, scale=1.0):
    return dict(rtol=1e-5 * scale, atol=1e-6 * scale) if dtype == np.float32 else \
        dict(rtol=1e-11 * scale, atol=1e-13 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_engine_matches_the_references(engine_name, name, dtype):
    e = load_engine(engine_name)
    if not e.supports(np.dtype(dtype)):
        pytest.skip(f"engine {engine_name!r} has no {np.dtype(dtype)} here")
    act = spec(name)
    z_host = engine_z(dtype)
    z64 = z_host.astype(np.float64)
    fn = ActivationFn.for_layer(act, e, *z_host.shape, dtype)
    tol = engine_tol(dtype)

    z, a = e.to_engine(z_host.copy(), dtype), e.empty(z_host.shape, dtype)
    assert fn.activ(z, a) is a
    np.testing.assert_array_equal(e.to_host(z), z_host)                   # activ keeps z
    np.testing.assert_allclose(e.to_host(a), ref_f(name, z64), **tol, err_msg="activ")

    b_host = np.random.default_rng(1).normal(size=z_host.shape[1]).astype(dtype)
    zb = (z_host + b_host).astype(np.float64)                            # rounded as the engine rounds
    z, b = e.to_engine(z_host.copy(), dtype), e.to_engine(b_host, dtype)
    assert fn.bias_activ(z, b, a) is a
    np.testing.assert_allclose(e.to_host(z), zb, **tol, err_msg="bias_activ: z += b")
    np.testing.assert_allclose(e.to_host(a), ref_f(name, zb), **tol, err_msg="bias_activ")

    z = e.to_engine(z_host.copy(), dtype)
    assert fn.prime(z) is z
    np.testing.assert_allclose(e.to_host(z), ref_df(name, z64), **tol, err_msg="prime")

    g_host = np.random.default_rng(2).normal(size=z_host.shape).astype(dtype)
    want = ref_df(name, z64) * g_host.astype(np.float64)
    for with_db in (False, True):
        z, g = e.to_engine(z_host.copy(), dtype), e.to_engine(g_host.copy(), dtype)
        db = e.empty((z_host.shape[1],), dtype) if with_db else None
        assert fn.delta(z, g, db) is z
        result = e.to_host(z)
        assert np.isfinite(result).all()
        np.testing.assert_allclose(result, want, **tol, err_msg="delta")
        if with_db:
            np.testing.assert_allclose(e.to_host(db), want.sum(axis=0), **engine_tol(dtype, 5), err_msg="∇b")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_engine_nan_and_infinities(engine_name, name):
    e = load_engine(engine_name)
    act = spec(name)
    z_host = np.tile(np.array([np.nan, -np.inf, np.inf, -1e4, 1e4, 0.5], np.float32), (2, 1))
    fn = ActivationFn.for_layer(act, e, *z_host.shape, np.float32)
    z, a = e.to_engine(z_host.copy()), e.empty(z_host.shape, np.float32)
    fn.activ(z, a)
    f = e.to_host(a)[0]
    z = e.to_engine(z_host.copy())
    fn.prime(z)
    p = e.to_host(z)[0]
    f_lo, f_hi, p_lo, p_hi = LIMITS[name]
    assert np.isnan(f[0]) and np.isnan(p[0])
    np.testing.assert_allclose(f[1:3], [f_lo, f_hi], rtol=1e-6)
    np.testing.assert_allclose(p[1:3], [p_lo, p_hi], rtol=1e-6)
    np.testing.assert_allclose(f[5], ref_f(name, 0.5), rtol=1e-6)


# -- (c) backprop through each, against finite differences ------------------------------------------
N_IN, N_HIDDEN, N_OUT, N = 4, 6, 3, 7


def small_net(name, engine_name, seed=0):
    net = dn.Network(N_IN, [dn.Dense(N_HIDDEN, name), dn.Dense(N_OUT, "linear")], engine=engine_name,
                     dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    # z of the hidden layer over about ±4, biases away from zero
    net.set_weights([(rng.normal(0, 1.0, w.shape), rng.uniform(-0.5, 0.5, b.shape)) for w, b in net.get_weights()])
    x = rng.normal(size=(N, N_IN))
    y = rng.normal(size=(N, N_OUT))
    return net, x, y


def numpy_backprop(name, net, x, y):
    """Quadratic cost C = Σ ½(a - y)² / n through Dense(name) → Dense(linear), by hand."""
    (w1, b1), (w2, b2) = net.get_weights()
    z1 = x @ w1.T + b1
    a1 = ref_f(name, z1)
    out = a1 @ w2.T + b2
    d2 = (out - y) / x.shape[0]
    d1 = (d2 @ w2) * ref_df(name, z1)
    return [(d1.T @ x, d1.sum(axis=0)), (d2.T @ a1, d2.sum(axis=0))]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_backprop_matches_finite_differences(engine_name, name):
    e = load_engine(engine_name)
    if not e.supports(np.dtype(np.float64)):
        pytest.skip(f"engine {engine_name!r} has no float64 here")
    net, x, y = small_net(name, engine_name)
    err = dn.check_gradients(net, x, y, cost="quadratic")
    assert err < 1e-6, f"{name} on {engine_name}: relative error {err:.2e}"
    for (gw, gb), (ew, eb) in zip(net.gradients(x, y, cost="quadratic"), numpy_backprop(name, net, x, y)):
        np.testing.assert_allclose(gw, ew, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gb, eb, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layers,cost", [
    (["gelu", "mish", "softmax"], "crossentropy"),
    (["selu", "silu", "gelu_tanh"], "quadratic"),
], ids=["gelu-mish-softmax", "selu-silu-gelu_tanh"])
@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_deeper_networks(engine_name, layers, cost):
    e = load_engine(engine_name)
    if not e.supports(np.dtype(np.float64)):
        pytest.skip(f"engine {engine_name!r} has no float64 here")
    specs = [dn.Dense(6, layers[0]), dn.Dense(5, layers[1]), dn.Dense(4, layers[2])]
    net = dn.Network(N_IN, specs, engine=engine_name, dtype="float64", seed=2)
    rng = np.random.default_rng(2)
    net.set_weights([(w, rng.uniform(-0.3, 0.3, b.shape)) for w, b in net.get_weights()])
    x = rng.normal(size=(N, N_IN))
    y = rng.integers(0, 4, N) if cost == "crossentropy" else rng.normal(size=(N, 4))
    assert dn.check_gradients(net, x, y, cost=cost) < 1e-6


def test_a_wrong_derivative_is_caught(monkeypatch):
    """The gradient check can fail: GELU's prime off by 1% in its second term."""
    from densenn.nn import activations_modern

    net, x, y = small_net("gelu", "cpu:numpy")
    assert dn.check_gradients(net, x, y, cost="quadratic") < 1e-6
    right = activations_modern.GELU.np_prime

    def wrong(self, z, work=None):
        keep = z.copy()
        right(self, z, work)
        z += 0.01 * keep * np.exp(-0.5 * keep * keep)
        return z

    monkeypatch.setattr(activations_modern.GELU, "np_prime", wrong)
    assert dn.check_gradients(net, x, y, cost="quadratic") > 1e-4


# -- (d) initialisers -------------------------------------------------------------------------------------
def test_selu_defaults_to_lecun_normal():
    assert "lecun_normal" in INITIALIZERS and "lecun_normal" in dn.INITIALIZERS
    assert default_init("selu") == "lecun_normal"
    fan_in = 1000
    net = dn.Network(fan_in, [dn.Dense(600, "selu")], dtype="float64", seed=0)
    w = net.get_weights()[0][0]
    std = math.sqrt(1.0 / fan_in)          # He would be √2 times that, Glorot (2/(1000+600))^½ = 1.12×
    assert w.std() == pytest.approx(std, rel=0.01)
    assert abs(w.mean()) < 0.01 * std
    kurtosis = ((w - w.mean()) ** 4).mean() / w.var() ** 2
    assert kurtosis == pytest.approx(3.0, abs=0.05)            # normal (a uniform draw has 1.8)


def test_lecun_normal_by_name():
    w = init_weights(400, 300, "lecun_normal", np.random.default_rng(0))
    assert w.shape == (300, 400) and w.std() == pytest.approx(math.sqrt(1 / 400), rel=0.01)
    net = dn.Network(400, [dn.Dense(300, "tanh", init="lecun_normal")], dtype="float64", seed=1)
    assert net.get_weights()[0][0].std() == pytest.approx(math.sqrt(1 / 400), rel=0.01)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu", "mish"])
def test_smooth_relus_default_to_he(name):
    assert default_init(name) == "he_normal"
    net = dn.Network(800, [dn.Dense(500, name)], dtype="float64", seed=0)
    assert net.get_weights()[0][0].std() == pytest.approx(math.sqrt(2 / 800), rel=0.01)


# -- (e) registration, names and errors ---------------------------------------------------------------
def test_registered_by_name():
    for name in NAMES:
        act = get_activation(name)
        assert ACTIVATIONS[name] is type(act) and act.name == name and act.elementwise
        assert get_activation(act.config()) == act and get_activation(act) is act
    assert (dn.GELU, dn.GELUTanh, dn.SiLU, dn.Mish, dn.SELU) == tuple(ACTIVATIONS[n] for n in NAMES)


@pytest.mark.parametrize("bad", ["gelu2", "swish", "GELU", "selu ", {"name": "mish2"}, None, 3])
def test_unknown_activation_names_still_fail(bad):
    with pytest.raises(dn.DensennError) as info:
        get_activation(bad)
    message = str(info.value)
    assert "activation" in message
    for name in NAMES:
        assert name in message, f"{name!r} missing from the options in: {message}"
    with pytest.raises(dn.DensennError, match="activation"):
        dn.Dense(4, bad)


@pytest.mark.parametrize("name", NAMES)
def test_saved_and_loaded_by_name(name, tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    net = dn.Network(5, [dn.Dense(8, name), dn.Dense(3, "softmax")], seed=1)
    net.fit(x, y, epochs=2, batch_size=20, progress=False)
    back = dn.load(net.save(tmp_path / f"{name}.dn"))
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    assert get_activation(back.specs[0].activation) == get_activation(name)


def test_the_cli_and_the_docs_list_them():
    from densenn.cli.parser import build_parser

    for name in NAMES:
        assert build_parser().parse_args(["train", "--activation", name]).activation == name
    row = next(line for line in (Path(__file__).parent.parent / "docs" / "cli.md").read_text().splitlines()
               if line.startswith("| `--activation`"))
    for name in NAMES + ["relu", "elu", "softplus", "softmax"]:
        assert f"`{name}`" in row, f"docs/cli.md's --activation row does not list {name!r}"


# -- allocation-free kernels ---------------------------------------------------------------------------
def traced_peak(fn, repeat=3):
    fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(repeat):
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def kernel_peak(act, rows):
    """The traced peak of activ, prime and delta through the NumPy kernels on a (rows, 257) z
    (odd: prime runs in pieces)."""
    z0 = np.random.default_rng(0).normal(0, 3, (rows, 257)).astype(np.float32)
    z, a, g, work = z0.copy(), np.empty_like(z0), np.empty_like(z0), np.empty_like(z0)

    def run():
        np.copyto(z, z0)
        act.np_activ(z, a, work)
        act.np_prime(z, work)
        np.copyto(z, z0)
        g.fill(0.5)
        act.np_delta(z, g, work)

    return traced_peak(run)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_kernels_allocate_nothing(name):
    """No temporary the size of z (66 kB, then 264 kB): a few hundred bytes of views and
    NumPy's error-state objects per call, the same at both sizes."""
    act = spec(name)
    peaks = [kernel_peak(act, rows) for rows in (64, 256)]
    assert peaks[0] < 4096 and peaks[1] < 4096, peaks
    assert peaks[1] - peaks[0] < 256, f"the peak grows with z: {peaks}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("engine_name", ["cpu", "cpu:numpy"])
def test_cpu_engine_passes_allocate_nothing(engine_name, name):
    e = load_engine(engine_name)
    act = spec(name)
    z0 = np.random.default_rng(0).normal(0, 3, (64, 256)).astype(np.float32)
    fn = ActivationFn.for_layer(act, e, *z0.shape, np.float32)
    z, a, g = e.to_engine(z0.copy()), e.empty(z0.shape, np.float32), e.empty(z0.shape, np.float32)
    b, db = e.zeros((z0.shape[1],), np.float32), e.empty((z0.shape[1],), np.float32)

    def run():
        np.copyto(z, z0)
        fn.bias_activ(z, b, a)
        g.fill(0.5)
        fn.delta(z, g, db)

    assert traced_peak(run) < 4096
