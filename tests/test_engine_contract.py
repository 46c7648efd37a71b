"""The engine contract: every protocol operation, on every engine, against float64 NumPy.

One module for all engines (the ``engine`` fixture in ``conftest.py`` lists them;
unavailable ones are skipped with the reason). Each operation is checked in float32
and float64 (float64 is skipped where the device lacks it) against a reference written
here in float64 from the same rounded inputs, with per-dtype tolerances.

How unwritten or overwritten memory is caught:

* outputs start as NaN ("poisoned"), so an element an operation forgot stays NaN;
* operations also run on views — ``x[:n]`` (the protocol's partial batch) and
  ``x[2:2+n]`` (a view at an offset, like ``acc[1:2]``) — of buffers padded with NaN
  (or -1 for integers), and the padding must come back untouched: a kernel that
  ignores the view's offset or its row count fails here.

Shapes are small and few on purpose: CLBlast compiles its GEMM kernels per transpose
and precision the first time (several seconds each on PoCL; cached on disk after).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from densenn.errors import DensennError
from densenn.nn.activation import ACTIVATIONS, ELU, ActivationFn, LeakyReLU, Sigmoid
from densenn.nn.cost import COSTS, diff
from densenn.nn.metrics import count_correct
from densenn.optim import adam_update, sgd_update
from test_activations_modern import NAMES as MODERN  # the new activations' references
from test_activations_modern import ref_df, ref_f

DTYPES = ("float32", "float64")
#: where an operation's arrays sit in their buffers (see the module docstring)
LAYOUTS = ("full", "head", "offset")
PAD = 2
#: tolerances per dtype: elementwise results and short sums of O(1) values
TOL = {np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-6},
       np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-13}}


@pytest.fixture(params=DTYPES)
def dtype(request, engine):
    dt = np.dtype(request.param)
    if not engine.supports(dt):
        pytest.skip(f"engine {engine.name!r} does not support {dt} on this device")
    return dt


def index_dtype(engine) -> np.dtype:
    return np.dtype(getattr(engine, "index_dtype", np.int32))


def rng(seed=0):
    return np.random.default_rng(seed)


def to_dev(engine, values, dtype=None):
    """A device copy that never shares memory with ``values`` (the CPU engine would)."""
    return engine.to_engine(np.array(values, dtype=dtype, copy=True))


def assert_close(actual, expected, dt, what="", scale=1.0):
    tol = TOL[np.dtype(dt)]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale, err_msg=what)


class Placed:
    """``values`` on the engine as a whole array ("full"), as the first rows of a padded
    buffer ("head": ``buf[:n]``) or in its middle ("offset": ``buf[2:2+n]``).

    ``get()`` reads the view back after checking the padding was not written.
    """

    def __init__(self, engine, values, layout="full"):
        values = np.asarray(values)
        pad_value = np.nan if values.dtype.kind == "f" else -1
        pad = np.full((PAD,) + values.shape[1:], pad_value, values.dtype)
        n = values.shape[0]
        if layout == "full":
            self.host, self.rows = values.copy(), slice(None)
        elif layout == "head":
            self.host, self.rows = np.concatenate([values, pad]), slice(0, n)
        elif layout == "offset":
            self.host, self.rows = np.concatenate([pad, values, pad]), slice(PAD, PAD + n)
        else:
            raise AssertionError(layout)
        self.engine = engine
        self.whole = to_dev(engine, self.host)
        self.view = self.whole[self.rows]

    def get(self):
        full = self.engine.to_host(self.whole)
        outside = np.ones(full.shape[0], dtype=bool)
        outside[self.rows] = False
        np.testing.assert_array_equal(full[outside], self.host[outside], err_msg="wrote outside the view")
        return full[self.rows]


def poisoned(engine, shape, dt, layout="full"):
    return Placed(engine, np.full(shape, np.nan, dtype=dt), layout)


# =========================================================================================
# memory
# =========================================================================================
def test_round_trip(engine, dtype):
    host = rng().normal(size=(5, 3)).astype(dtype)
    x = engine.to_engine(host.copy())
    assert engine.owns(x)
    assert tuple(x.shape) == (5, 3) and x.dtype == dtype
    assert engine.nbytes(x) == host.nbytes
    np.testing.assert_array_equal(engine.to_host(x), host)

    other = rng(1).normal(size=(5, 3)).astype(dtype)
    assert engine.upload(other, x) is x
    np.testing.assert_array_equal(engine.to_host(x), other)

    z = engine.zeros((4, 2), dtype)
    np.testing.assert_array_equal(engine.to_host(z), np.zeros((4, 2), dtype))
    e = engine.empty((3, 7), dtype)
    assert tuple(e.shape) == (3, 7) and e.dtype == dtype
    engine.synchronize()


def test_round_trip_views_and_ints(engine):
    it = index_dtype(engine)
    labels = engine.to_engine(np.array([3, 1, 4, 1, 5], dtype=it))
    assert labels.dtype == it
    np.testing.assert_array_equal(engine.to_host(labels), [3, 1, 4, 1, 5])
    np.testing.assert_array_equal(engine.to_host(engine.zeros((3,), it)), [0, 0, 0])
    # upload into a view: only its rows change
    p = Placed(engine, np.zeros((4, 3), np.float32), "offset")
    engine.upload(np.ones((4, 3)), p.view)
    np.testing.assert_array_equal(p.get(), np.ones((4, 3)))


def test_owns_and_release(engine):
    x = engine.zeros((6, 4), np.float32)
    assert engine.owns(x) and engine.owns(x[:2])
    if engine.name != "cpu":
        assert not engine.owns(np.zeros((6, 4), np.float32))
    engine.release(x[:2])        # a view releases nothing: x stays usable
    engine.fill(x, 2.0)
    np.testing.assert_array_equal(engine.to_host(x), np.full((6, 4), 2.0))
    engine.release(x)


def test_numpy_arrays_are_refused(engine):
    """A host array passed to a device engine's operation is an error, not garbage."""
    if engine.name == "cpu":
        pytest.skip("NumPy arrays are the CPU engine's own")
    host = np.ones((3, 3), np.float32)
    d = engine.zeros((3, 3), np.float32)
    calls = [
        lambda: engine.gemm(1.0, host, d, 0.0, d),
        lambda: engine.gemm(1.0, d, d, 0.0, host),
        lambda: engine.axpy(1.0, host, d),
        lambda: Sigmoid().activ(engine, host, d),
        lambda: Sigmoid().bias_activ(engine, d, np.ones(3, np.float32), d),
        lambda: engine.take_rows(host, np.array([0, 1, 2]), d),
        lambda: count_correct(engine, d, np.zeros(3, np.int32), None, engine.zeros((1,), np.float32)),
        lambda: sgd_update(engine, d, host, None, 0.1, 0.0, False, 0.0),
        lambda: engine.to_host(host),
        lambda: engine.upload(host, host),
    ]
    for call in calls:
        with pytest.raises(DensennError):
            call()


def test_other_engines_arrays_are_refused(engine, available_engines):
    """Arrays of another device engine (or another OpenCL context) are refused."""
    others = [e for e in available_engines.values() if e.name != "cpu" and e is not engine]
    if engine.name == "cpu" or not others:
        pytest.skip("needs two device engines")
    mine = engine.zeros((3, 3), np.float32)
    for other in others:
        theirs = other.zeros((3, 3), np.float32)
        assert not engine.owns(theirs)
        with pytest.raises(DensennError):
            engine.axpy(1.0, theirs, mine)
        with pytest.raises(DensennError):
            engine.gemm(1.0, mine, theirs, 0.0, mine)


# =========================================================================================
# BLAS-like
# =========================================================================================
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (0.5, 2.0)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_gemm(engine, dtype, trans_a, trans_b, alpha, beta, layout):
    m, n, k = 6, 5, 4
    r = rng()
    a_host = r.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b_host = r.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    c_host = r.normal(size=(m, n)).astype(dtype) if beta else np.full((m, n), np.nan, dtype)
    a, b, c = (Placed(engine, h, layout) for h in (a_host, b_host, c_host))
    out = engine.gemm(alpha, a.view, b.view, beta, c.view, trans_a=trans_a, trans_b=trans_b)
    assert out is c.view
    op_a = a_host.T if trans_a else a_host
    op_b = b_host.T if trans_b else b_host
    expected = alpha * op_a.astype(np.float64) @ op_b.astype(np.float64)
    if beta:
        expected += beta * c_host
    assert_close(c.get(), expected, dtype, "c", scale=5)
    a.get(), b.get()      # the operands are read-only


def test_gemm_layer_products_on_partial_batch(engine, dtype):
    """The three products of a dense layer, on the first n rows of the batch buffers."""
    batch, n, n_in, n_out = 7, 5, 4, 3
    r = rng(3)
    x = Placed(engine, r.normal(size=(n, n_in)).astype(dtype), "head")
    w = to_dev(engine, r.normal(size=(n_out, n_in)), dtype)
    w_host = engine.to_host(w).astype(np.float64)
    z = poisoned(engine, (n, n_out), dtype, "head")
    engine.gemm(1.0, x.view, w, 0.0, z.view, trans_b=True)              # z = x·wᵀ
    x64 = x.get().astype(np.float64)
    assert_close(z.get(), x64 @ w_host.T, dtype, "z", scale=5)
    dw = to_dev(engine, np.full((n_out, n_in), np.nan), dtype)
    engine.gemm(1.0, z.view, x.view, 0.0, dw, trans_a=True)             # ∇w = δᵀ·x
    z64 = z.get().astype(np.float64)
    assert_close(engine.to_host(dw), z64.T @ x64, dtype, "dw", scale=5)
    engine.gemm(1.0, z.view, w, 0.0, x.view)                            # signal = δ·w
    assert_close(x.get(), z64 @ w_host, dtype, "signal", scale=5)
    assert batch > n


@pytest.mark.parametrize("layout", LAYOUTS)
def test_add_bias(engine, dtype, layout):
    r = rng()
    z_host, b_host = r.normal(size=(6, 5)).astype(dtype), r.normal(size=5).astype(dtype)
    z, b = Placed(engine, z_host, layout), Placed(engine, b_host, layout)
    assert engine.add_bias(z.view, b.view) is z.view
    assert_close(z.get(), z_host.astype(np.float64) + b_host, dtype)
    b.get()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 300)], ids=["small", "wide"])
def test_sum_rows(engine, dtype, layout, shape):
    x_host = rng().normal(size=shape).astype(dtype)
    x, out = Placed(engine, x_host, layout), poisoned(engine, shape[1:], dtype, layout)
    assert engine.sum_rows(x.view, out.view) is out.view
    assert_close(out.get(), x_host.astype(np.float64).sum(axis=0), dtype, scale=5)


SHAPES = [(6, 5), (7,), (37, 11)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_axpy(engine, dtype, layout, shape):
    r = rng()
    x_host, y_host = r.normal(size=shape).astype(dtype), r.normal(size=shape).astype(dtype)
    x, y = Placed(engine, x_host, layout), Placed(engine, y_host, layout)
    assert engine.axpy(-0.75, x.view, y.view) is y.view
    assert_close(y.get(), y_host - 0.75 * x_host.astype(np.float64), dtype)
    np.testing.assert_array_equal(x.get(), x_host)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scal(engine, dtype, layout, shape):
    x_host = rng().normal(size=shape).astype(dtype)
    x = Placed(engine, x_host, layout)
    assert engine.scal(1.5, x.view) is x.view
    assert_close(x.get(), 1.5 * x_host.astype(np.float64), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_copy(engine, dtype, layout, shape):
    x_host = rng().normal(size=shape).astype(dtype)
    x, y = Placed(engine, x_host, layout), poisoned(engine, shape, dtype, layout)
    assert engine.copy(x.view, y.view) is y.view
    np.testing.assert_array_equal(y.get(), x_host)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fill(engine, dtype, layout, shape):
    x = poisoned(engine, shape, dtype, layout)
    assert engine.fill(x.view, -2.5) is x.view
    np.testing.assert_array_equal(x.get(), np.full(shape, -2.5))
    engine.fill(x.view, 0.0)
    np.testing.assert_array_equal(x.get(), np.zeros(shape))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("where", ["host", "device"])
def test_take_rows(engine, dtype, layout, where):
    src_host = rng().normal(size=(9, 4)).astype(dtype)
    idx_host = np.array([3, 0, 8, 3, 5])
    idx = idx_host if where == "host" else to_dev(engine, idx_host, index_dtype(engine))
    src, out = Placed(engine, src_host, layout), poisoned(engine, (5, 4), dtype, layout)
    assert engine.take_rows(src.view, idx, out.view) is out.view
    np.testing.assert_array_equal(out.get(), src_host[idx_host])
    # labels: a 1-D integer source
    it = index_dtype(engine)
    labels_host = np.arange(9, dtype=it) * 3
    labels, lab_out = Placed(engine, labels_host, layout), Placed(engine, np.full(5, -7, it), layout)
    engine.take_rows(labels.view, idx, lab_out.view)
    np.testing.assert_array_equal(lab_out.get(), labels_host[idx_host])


# =========================================================================================
# activations
# =========================================================================================
#: every registered activation, plus non-default parameters
ACTS = [cls() for cls in ACTIVATIONS.values()] + [LeakyReLU(0.2), ELU(0.5)]


def ref_activ(act, z):
    name, p = act.name, act.param
    if name == "sigmoid":
        return special.expit(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, p * z)
    if name == "elu":
        return np.where(z > 0, z, p * np.expm1(np.minimum(z, 0.0)))
    if name == "softplus":
        return np.logaddexp(0.0, z)
    if name == "linear":
        return z.copy()
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if name in MODERN:
        return ref_f(name, z)
    raise AssertionError(f"no reference for activation {name!r}: add one to this test")


def ref_prime(act, z):
    name, p = act.name, act.param
    if name == "sigmoid":
        s = special.expit(z)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, p)
    if name == "elu":
        return np.where(z > 0, 1.0, p * np.exp(np.minimum(z, 0.0)))
    if name == "softplus":
        return special.expit(z)
    if name == "linear":
        return np.ones_like(z)
    if name == "softmax":             # the diagonal of the Jacobian only
        s = ref_activ(act, z)
        return s * (1 - s)
    if name in MODERN:
        return ref_df(name, z)
    raise AssertionError(f"no reference for activation {name!r}: add one to this test")


def ref_delta(act, z, g):
    if act.name == "softmax":         # the full Jacobian-vector product
        s = ref_activ(act, z)
        return s * (g - (s * g).sum(axis=1, keepdims=True))
    return ref_prime(act, z) * g


def sample_z(dtype, shape=(6, 5), seed=0):
    """Normal values with saturating ones mixed in: ±1e3 (no NaN allowed), ±30, exact 0."""
    z = rng(seed).normal(scale=3.0, size=shape)
    z[0, :4] = [1e3, -1e3, 30.0, -30.0]
    z[1, 0] = 0.0
    z[2, :] = -1e3                    # a row of one large value: softmax must stay finite
    z[3, 1:3] = [1e3, 1e3]
    return z.astype(dtype)


def work_for(engine, act, z_view, dtype):
    rows, cols = z_view.shape
    return ActivationFn.for_layer(act, engine, rows, cols, dtype).work


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_activ(engine, dtype, act, layout):
    z_host = sample_z(dtype)
    z, a = Placed(engine, z_host, layout), poisoned(engine, z_host.shape, dtype, layout)
    assert act.activ(engine, z.view, a.view, work_for(engine, act, z.view, dtype)) is a.view
    result = a.get()
    assert np.isfinite(result).all()
    assert_close(result, ref_activ(act, z_host.astype(np.float64)), dtype)
    np.testing.assert_array_equal(z.get(), z_host)        # activ keeps z


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_bias_activ(engine, dtype, act, layout):
    z_host = sample_z(dtype)
    b_host = rng(1).normal(size=z_host.shape[1]).astype(dtype)
    z, b = Placed(engine, z_host, layout), Placed(engine, b_host, layout)
    a = poisoned(engine, z_host.shape, dtype, layout)
    assert act.bias_activ(engine, z.view, b.view, a.view, work_for(engine, act, z.view, dtype)) is a.view
    zb = (z_host + b_host).astype(np.float64)      # z + b rounded as the engine rounds it
    assert_close(z.get(), zb, dtype, "z += b")
    result = a.get()
    assert np.isfinite(result).all()
    assert_close(result, ref_activ(act, zb), dtype, "a")
    b.get()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_prime(engine, dtype, act, layout):
    z_host = sample_z(dtype)
    z = Placed(engine, z_host, layout)
    assert act.prime(engine, z.view, work_for(engine, act, z.view, dtype)) is z.view
    result = z.get()
    assert np.isfinite(result).all()
    assert_close(result, ref_prime(act, z_host.astype(np.float64)), dtype)


@pytest.mark.parametrize("with_db", [False, True], ids=["delta", "delta+db"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_delta(engine, dtype, act, layout, with_db):
    """z = f'(z) ∘ g; with db also db = Σ rows of the new z (∇b), in the same call."""
    z_host = sample_z(dtype)
    g_host = rng(2).normal(size=z_host.shape).astype(dtype)
    z, g = Placed(engine, z_host, layout), Placed(engine, g_host, layout)
    db = poisoned(engine, z_host.shape[1:], dtype, layout) if with_db else None
    work = work_for(engine, act, z.view, dtype)
    assert act.delta(engine, z.view, g.view, work, db.view if with_db else None) is z.view
    result = z.get()          # g may be used as scratch: only its padding is checked
    assert np.isfinite(result).all()
    want = ref_delta(act, z_host.astype(np.float64), g_host.astype(np.float64))
    assert_close(result, want, dtype)
    if with_db:
        assert_close(db.get(), want.sum(axis=0), dtype, scale=5)
    g.get()


# =========================================================================================
# costs and metrics
# =========================================================================================
#: one instance of every cost class (the registry has aliases)
COST_LIST = list({type(c): c for c in (cls() for cls in COSTS.values())}.values())


def ref_loss(cost, a, y, eps):
    name = cost.name
    if name == "quadratic":
        return 0.5 * (a - y) ** 2
    if name == "crossentropy":
        return -y * np.log(np.maximum(a, eps))
    if name == "binary_crossentropy":
        return -(y * np.log(np.maximum(a, eps)) + (1 - y) * np.log(np.maximum(1 - a, eps)))
    if name == "mae":
        return np.abs(a - y)
    raise AssertionError(f"no reference for cost {name!r}: add one to this test")


def ref_grad(cost, a, y, eps):
    name = cost.name
    if name == "quadratic":
        return a - y
    if name == "crossentropy":
        return -y / np.maximum(a, eps)
    if name == "binary_crossentropy":
        return (a - y) / np.maximum(a * (1 - a), eps)
    if name == "mae":
        return np.sign(a - y)
    raise AssertionError(f"no reference for cost {name!r}: add one to this test")


def sample_outputs(dtype, shape=(6, 5), seed=0):
    """Outputs in [0, 1] (clipped ends included) and 0/1 targets, as every cost accepts."""
    r = rng(seed)
    a = r.uniform(0.02, 0.98, size=shape)
    a.flat[:4] = [0.0, 1.0, 1e-12, 1.0 - 1e-12]
    y = (r.uniform(size=shape) < 0.4).astype(np.float64)
    y.flat[:4] = [1.0, 0.0, 1.0, 0.0]
    return a.astype(dtype), y.astype(dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(6, 5), (40, 9)], ids=["small", "large"])
@pytest.mark.parametrize("cost", COST_LIST, ids=repr)
def test_cost_value(engine, dtype, cost, shape, layout):
    a_host, y_host = sample_outputs(dtype, shape)
    a, y = Placed(engine, a_host, layout), Placed(engine, y_host, layout)
    work = engine.empty(shape, dtype)
    acc = to_dev(engine, [7.0, 3.0], dtype)
    assert cost.value(engine, a.view, y.view, work, acc[1:2]) is not None
    total = ref_loss(cost, a_host.astype(np.float64), y_host.astype(np.float64), cost.eps(dtype)).sum()
    got = engine.to_host(acc)
    assert got[0] == 7.0
    assert_close(got[1], 3.0 + total, dtype, "acc", scale=10)
    np.testing.assert_array_equal(a.get(), a_host)
    np.testing.assert_array_equal(y.get(), y_host)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "into_a"])
@pytest.mark.parametrize("cost", COST_LIST, ids=repr)
def test_cost_gradient(engine, dtype, cost, in_place, layout):
    a_host, y_host = sample_outputs(dtype)
    a, y = Placed(engine, a_host, layout), Placed(engine, y_host, layout)
    out = a if in_place else poisoned(engine, a_host.shape, dtype, layout)
    work = engine.empty(a_host.shape, dtype)
    scale = 1.0 / 6
    assert cost.gradient(engine, a.view, y.view, out.view, scale, work) is out.view
    expected = scale * ref_grad(cost, a_host.astype(np.float64), y_host.astype(np.float64), cost.eps(dtype))
    assert_close(out.get(), expected, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_diff(engine, dtype, layout):
    a_host, y_host = sample_outputs(dtype)
    a, y = Placed(engine, a_host, layout), Placed(engine, y_host, layout)
    out = poisoned(engine, a_host.shape, dtype, layout)
    assert diff(engine, a.view, y.view, out.view, 0.25) is out.view
    assert_close(out.get(), 0.25 * (a_host.astype(np.float64) - y_host), dtype)


def labelled_outputs(dtype, rows, cols, seed=0):
    """Outputs with no ties and labels right on even rows only: the count is ceil(rows/2)."""
    r = rng(seed)
    if cols == 1:
        a = r.uniform(0.05, 0.95, size=(rows, 1))
        a[np.abs(a - 0.5) < 0.01] = 0.3
        pred = (a[:, 0] > 0.5).astype(np.int64)
        labels = np.where(np.arange(rows) % 2 == 0, pred, 1 - pred)
    else:
        a = np.stack([r.permutation(cols) for _ in range(rows)]).astype(np.float64) / cols
        pred = a.argmax(axis=1)
        labels = np.where(np.arange(rows) % 2 == 0, pred, (pred + 1) % cols)
    return a.astype(dtype), labels, (rows + 1) // 2


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rows, cols", [(7, 4), (7, 1), (300, 3)], ids=["classes", "single", "many_rows"])
def test_count_correct(engine, dtype, rows, cols, layout):
    a_host, labels_host, expected = labelled_outputs(dtype, rows, cols)
    it = index_dtype(engine)
    a, labels = Placed(engine, a_host, layout), Placed(engine, labels_host.astype(it), layout)
    work = engine.empty((rows,), it)
    acc = to_dev(engine, [2.0, 5.0], dtype)
    count_correct(engine, a.view, labels.view, work, acc[1:2])
    np.testing.assert_array_equal(engine.to_host(acc), [2.0, 5.0 + expected])
    np.testing.assert_array_equal(a.get(), a_host)


# =========================================================================================
# optimizers
# =========================================================================================
SGD_CASES = {  # momentum, nesterov, weight decay
    "plain": (0.0, False, 0.0), "plain_wd": (0.0, False, 0.01), "momentum": (0.9, False, 0.0),
    "momentum_wd": (0.9, False, 0.01), "nesterov": (0.9, True, 0.0), "nesterov_wd": (0.8, True, 0.01)}


@pytest.mark.parametrize("shape", [(5, 3), (5,), (37, 11)], ids=str)
@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_update(engine, dtype, case, shape):
    momentum, nesterov, wd = SGD_CASES[case]
    r = rng()
    w_host, g_host, v_host = (r.normal(size=shape).astype(dtype) for _ in range(3))
    lr = 0.1
    w, g = to_dev(engine, w_host), to_dev(engine, g_host)
    v = to_dev(engine, v_host) if momentum else None
    sgd_update(engine, w, g, v, lr, momentum, nesterov, wd)
    w64, g64 = w_host.astype(np.float64), g_host + wd * w_host.astype(np.float64)
    if momentum:
        v_new = momentum * v_host - lr * g64
        w_new = w64 + (momentum * v_new - lr * g64 if nesterov else v_new)
        assert_close(engine.to_host(v), v_new, dtype, "v")
    else:
        w_new = w64 - lr * g64
    assert_close(engine.to_host(w), w_new, dtype, "w")


ADAM_CASES = {"plain": (0.0, 0.0), "l2": (0.01, 0.0), "decoupled": (0.0, 1e-3), "both": (0.01, 1e-3)}


@pytest.mark.parametrize("shape", [(5, 3), (5,), (37, 11)], ids=str)
@pytest.mark.parametrize("case", ADAM_CASES)
def test_adam_update(engine, dtype, case, shape):
    wd, decay = ADAM_CASES[case]
    r = rng()
    w_host, g_host, m_host = (r.normal(size=shape).astype(dtype) for _ in range(3))
    v_host = np.abs(r.normal(size=shape)).astype(dtype)
    step, eps, beta1, beta2 = 0.003, 1e-7, 0.9, 0.999
    w, g, m, v = (to_dev(engine, h) for h in (w_host, g_host, m_host, v_host))
    size = int(np.prod(shape))
    scratch = engine.empty((size + 5,), dtype)          # as Adam does: a view of a shared buffer
    work = scratch[:size].reshape(shape)
    adam_update(engine, w, g, m, v, step, eps, beta1, beta2, wd, decay, work)
    w64 = w_host.astype(np.float64)
    g64 = g_host + wd * w64
    m_new = beta1 * m_host + (1 - beta1) * g64
    v_new = beta2 * v_host + (1 - beta2) * g64 ** 2
    w_new = (1 - decay) * w64 - step * m_new / (np.sqrt(v_new) + eps)
    assert_close(engine.to_host(m), m_new, dtype, "m")
    assert_close(engine.to_host(v), v_new, dtype, "v")
    assert_close(engine.to_host(w), w_new, dtype, "w")


# =========================================================================================
# transfers
# =========================================================================================
def test_one_upload_per_batch(engine):
    """A batch costs one host→device copy: its indices; the rows are gathered on the device."""
    if not hasattr(engine, "uploads"):
        pytest.skip(f"engine {engine.name!r} does not count uploads")
    it = index_dtype(engine)
    xs = to_dev(engine, rng().normal(size=(50, 4)), np.float32)
    ys = to_dev(engine, rng(1).normal(size=(50, 3)), np.float32)
    labels = to_dev(engine, np.arange(50) % 3, it)
    x, y, lab = engine.empty((8, 4), np.float32), engine.empty((8, 3), np.float32), engine.empty((8,), it)
    idx = rng(2).permutation(50)[:8]
    device = engine.name != "cpu"

    before = engine.uploads
    engine.take_rows(xs, idx, x)                 # host indices: uploaded by take_rows
    if device:
        assert engine.uploads - before == 1
    else:                                        # nothing to copy; counted or not
        assert engine.uploads - before <= 1

    idx_e = engine.zeros((8,), it)               # the training loop: upload once, gather thrice
    before = engine.uploads
    engine.upload(idx, idx_e)
    for src, out in ((xs, x), (ys, y), (labels, lab)):
        engine.take_rows(src, idx_e, out)
    assert engine.uploads - before == 1
    if hasattr(engine, "downloads"):
        before = engine.downloads
        got = engine.to_host(lab)
        assert engine.downloads - before == 1
    else:
        got = engine.to_host(lab)
    np.testing.assert_array_equal(got, idx % 3)

    big = rng(3).integers(0, 50, size=3000)        # a larger batch than any before
    out = engine.empty((3000, 4), np.float32)
    before = engine.uploads
    engine.take_rows(xs, big, out)
    assert engine.uploads - before <= 1
    np.testing.assert_array_equal(engine.to_host(out), engine.to_host(xs)[big])


def test_fit_uploads_once_per_batch(engine):
    """Through the whole fit loop: an extra epoch of 4 batches costs exactly 4 uploads."""
    if not hasattr(engine, "uploads"):
        pytest.skip(f"engine {engine.name!r} does not count uploads")
    import densenn as dn

    x = rng(4).normal(size=(100, 5)).astype(np.float32)
    y = np.arange(100) % 3
    counts = []
    for epochs in (1, 2):
        net = dn.Network(5, [dn.Dense(8, "tanh"), dn.Dense(3, "softmax")], engine=engine, seed=0)
        before = engine.uploads
        net.fit(x, y, epochs=epochs, batch_size=32, progress=False)
        counts.append(engine.uploads - before)
        net.release()
    assert counts[1] - counts[0] == 4              # ceil(100 / 32) batches, one upload each


# =========================================================================================
# a whole network: the same training on every engine
# =========================================================================================
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_matches_cpu(engine, dtype, optimizer):
    """Two epochs of the same small network from the same seed: identical initial weights,
    the same per-epoch loss curve and final weights as on the CPU engine (last batch partial)."""
    import densenn as dn
    from densenn.backend import get_engine

    r = rng(5)
    x = r.normal(size=(120, 8))
    y = (x[:, :3] @ r.normal(size=3) > 0).astype(int) + (x[:, 3] > 0.5)     # 3 classes

    def train(eng):
        net = dn.Network(8, [dn.Dense(16, "tanh"), dn.Dense(3, "softmax")], engine=eng, dtype=dtype.name, seed=3)
        initial = net.get_weights()
        opt = dn.SGD(lr=0.1, momentum=0.9) if optimizer == "sgd" else dn.Adam(lr=0.01)
        history = net.fit(x, y, epochs=2, batch_size=32, optimizer=opt, progress=False)
        final = net.get_weights()
        net.release()
        return initial, history["loss"], final

    ref_initial, ref_loss, ref_final = train(get_engine("cpu"))
    initial, loss, final = train(engine)
    for (w, b), (rw, rb) in zip(initial, ref_initial):
        np.testing.assert_array_equal(w, rw)
        np.testing.assert_array_equal(b, rb)
    assert len(loss) == 2
    assert_close(loss, ref_loss, dtype, "loss per epoch", scale=20)
    for (w, b), (rw, rb) in zip(final, ref_final):
        assert_close(w, rw, dtype, "final w", scale=50)
        assert_close(b, rb, dtype, "final b", scale=50)


# =========================================================================================
# the OpenCL engine's own surface: devices, errors
# =========================================================================================
@pytest.fixture(scope="module")
def opencl():
    from densenn.backend import get_engine
    from densenn.errors import EngineUnavailable

    try:
        return get_engine("opencl")
    except EngineUnavailable as exc:
        pytest.skip(f"engine 'opencl' unavailable: {exc}")


def test_opencl_list_devices(opencl):
    from densenn.backend import opencl as module

    devices = module.list_devices()
    assert devices and devices.reason is None
    for d in devices:
        assert {"id", "platform", "device", "type", "fp64", "memory"} <= set(d)
    assert module.describe()["available"] is True
    assert opencl.name == "opencl" and opencl.device_name


def test_opencl_device_selection(opencl, monkeypatch):
    from densenn.backend import get_engine
    from densenn.backend import opencl as module

    with pytest.raises(DensennError, match="no OpenCL device 9:9.*devices here: 0:0"):
        get_engine("opencl:9:9")
    with pytest.raises(DensennError, match="'P:D'"):
        get_engine("opencl:gpu")
    monkeypatch.setenv(module.DEVICE_ENV, "7:0")
    with pytest.raises(DensennError, match=module.DEVICE_ENV):
        module.create_engine("")
    monkeypatch.setenv(module.DEVICE_ENV, "0:0")
    engine = module.create_engine("")
    assert engine.device == module.cl.get_platforms()[0].get_devices()[0]


def test_opencl_messages_name_the_owner(opencl):
    from densenn.backend import opencl as module

    d = opencl.zeros((3, 3), np.float32)
    with pytest.raises(DensennError, match="belongs to engine 'cpu', not 'opencl'"):
        opencl.gemm(1.0, np.ones((3, 3), np.float32), d, 0.0, d)
    other = module.OpenCLEngine(opencl.device)        # same device, another context
    with pytest.raises(DensennError, match="another OpenCL context"):
        opencl.axpy(1.0, other.zeros((3, 3), np.float32), d)
    with pytest.raises(DensennError, match="C-contiguous"):
        opencl.scal(2.0, d[:, :2])
    with pytest.raises(DensennError, match="does not fit"):
        opencl.gemm(1.0, d, opencl.zeros((2, 3), np.float32), 0.0, d)


def test_opencl_without_platform(opencl, monkeypatch):
    from densenn.backend import opencl as module
    from densenn.errors import EngineUnavailable

    monkeypatch.setattr(module.cl, "get_platforms", lambda: [])
    with pytest.raises(EngineUnavailable, match="no OpenCL platform.*pyopencl\\[pocl\\]"):
        module.create_engine("")
    devices = module.list_devices()
    assert devices == [] and "no OpenCL platform" in devices.reason


def test_opencl_without_fp64(opencl):
    from densenn.backend import opencl as module

    engine = module.OpenCLEngine(opencl.device)
    engine.fp64 = False               # as on a device without cl_khr_fp64
    assert engine.supports("float32") and not engine.supports("float64")
    with pytest.raises(DensennError, match="cl_khr_fp64"):
        engine.empty((2, 2), np.float64)
