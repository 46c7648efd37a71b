"""Per-sample and per-class weights: the ``row`` array role, the weighted kernels, the
weighted gradient against finite differences, and scikit-learn's meaning of the weights.

The loss of a weighted batch is Σ wᵢ lᵢ / Σ wᵢ (scikit-learn's normalisation), so a weight
of 0 is the sample left out, a weight of 2 the sample twice, and uniform weights are no
weights. Networks here are Dense only: batch statistics and dropout masks depend on the
other rows of a batch, so there "left out" would not be the same batch.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight

import densenn as dn
import test_memory as mem
from densenn.errors import DensennError
from densenn.kernels.numpy_eval import per_row
from densenn.kernels.ops import Map, Sum
from densenn.nn.cost import Cost, diff
from densenn.nn.gradcheck import numerical_gradients
from densenn.nn.metrics import count_correct
from densenn.nn.targets import index_dtype, prepare_targets
from densenn.nn.trainer import TrainingNetwork
from densenn.training.weights import resolve_weights
from test_engine_contract import (
    COST_LIST,
    LAYOUTS,
    Placed,
    assert_close,
    labelled_outputs,
    poisoned,
    ref_grad,
    ref_loss,
    sample_outputs,
)

N_IN, N = 4, 9


class LogCosh(Cost):
    """A cost declared by its expressions only (as ``register_cost`` takes them; not
    registered, so that the registry stays as the other tests know it)."""

    name = "test_logcosh"
    loss = "log(0.5 * (exp(a - y) + exp(y - a)))"
    grad = "tanh(a - y)"


@pytest.fixture(params=("float32", "float64"))
def dtype(request, engine):
    dt = np.dtype(request.param)
    if not engine.supports(dt):
        pytest.skip(f"engine {engine.name!r} does not support {dt} on this device")
    return dt


@pytest.fixture
def engine64(engine):
    if not engine.supports(np.float64):
        pytest.skip(f"engine {engine.name!r} has no float64 on this device: finite differences need it")
    return engine


def weights(rows, seed=0, zero=(1,)):
    w = np.random.default_rng(seed).uniform(0.2, 2.0, rows)
    w[list(zero)] = 0.0
    return w


# =========================================================================================
# the row role, on every engine
# =========================================================================================
def _weighted_sum_np(engine, arrays, scalars, work):
    x, w = arrays
    np.multiply(x, x, out=work)
    return float(per_row(np.multiply, work, w, work).sum())


#: a user-declared map and sum with a row vector: the generated kernels (and the map's NumPy
#: fallback; a Sum brings its NumPy form)
SCALE_ROWS = Map("test_scale_rows", "x b:col w:row out", writes="out", body="out = w * x + b")
SUM_ROWS_W = Sum("test_weighted_sum", "x w:row", body="term = w * x * x", numpy=_weighted_sum_np)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_row_role_map_and_sum(engine, dtype, layout):
    r = np.random.default_rng(0)
    x_host, b_host, w_host = r.normal(size=(7, 3)), r.normal(size=3), r.uniform(size=7)
    x, w = Placed(engine, x_host.astype(dtype), layout), Placed(engine, w_host.astype(dtype), layout)
    b = engine.to_engine(b_host.astype(dtype))
    out = poisoned(engine, (7, 3), dtype, layout)
    engine.map(SCALE_ROWS, (x.view, b, w.view, out.view))
    xr, wr = x_host.astype(dtype).astype(np.float64), w_host.astype(dtype).astype(np.float64)
    assert_close(out.get(), wr[:, None] * xr + b_host.astype(dtype), dtype)
    acc = engine.to_engine(np.array([1.5], dtype))
    engine.reduce(SUM_ROWS_W, (x.view, w.view), (), acc, work=engine.empty((7, 3), dtype))
    assert_close(engine.to_host(acc)[0], 1.5 + (wr[:, None] * xr * xr).sum(), dtype, scale=10)
    w.get()


def test_row_arrays_are_read_only():
    with pytest.raises(DensennError, match="row array"):
        Map("test_writes_a_row", "x w:row", writes="w", body="w = x")


def test_a_row_vector_of_the_wrong_length_is_refused(engine):
    x = engine.zeros((4, 3), np.float32)
    with pytest.raises(DensennError, match="one per row"):
        engine.map(SCALE_ROWS, (x, engine.zeros((3,), np.float32), engine.zeros((3,), np.float32), x))


# =========================================================================================
# the weighted kernels, on every engine, against float64 NumPy
# =========================================================================================
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cost", COST_LIST + [LogCosh()], ids=repr)
def test_weighted_cost_value_and_gradient(engine, dtype, cost, layout):
    a_host, y_host = sample_outputs(dtype, (6, 5))
    w_host = weights(6).astype(dtype)
    a, y, w = (Placed(engine, h, layout) for h in (a_host, y_host, w_host))
    a64, y64, w64 = (h.astype(np.float64) for h in (a_host, y_host, w_host))
    eps = cost.eps(dtype)
    if isinstance(cost, LogCosh):
        lo, go = np.log(np.cosh(a64 - y64)), np.tanh(a64 - y64)
    else:
        lo, go = ref_loss(cost, a64, y64, eps), ref_grad(cost, a64, y64, eps)
    acc = engine.to_engine(np.array([7.0, 3.0], dtype))
    cost.value(engine, a.view, y.view, engine.empty((6, 5), dtype), acc[1:2], w.view)
    got = engine.to_host(acc)
    assert got[0] == 7.0
    assert_close(got[1], 3.0 + (w64[:, None] * lo).sum(), dtype, "Σ w·loss", scale=10)
    out = poisoned(engine, (6, 5), dtype, layout)
    assert cost.gradient(engine, a.view, y.view, out.view, 0.25, engine.empty((6, 5), dtype), w.view) is out.view
    assert_close(out.get(), 0.25 * w64[:, None] * go, dtype, "w·∂C/∂a")
    np.testing.assert_array_equal(a.get(), a_host)
    np.testing.assert_array_equal(w.get(), w_host)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_weighted_diff(engine, dtype, layout):
    a_host, y_host = sample_outputs(dtype)
    w_host = weights(6).astype(dtype)
    a, y, w = (Placed(engine, h, layout) for h in (a_host, y_host, w_host))
    out = poisoned(engine, a_host.shape, dtype, layout)
    assert diff(engine, a.view, y.view, out.view, 0.25, w.view) is out.view
    expected = 0.25 * w_host.astype(np.float64)[:, None] * (a_host.astype(np.float64) - y_host)
    assert_close(out.get(), expected, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rows, cols", [(7, 4), (7, 1), (300, 3)], ids=["classes", "single", "many_rows"])
def test_weighted_count_correct(engine, dtype, rows, cols, layout):
    a_host, labels_host, _ = labelled_outputs(dtype, rows, cols)
    w_host = weights(rows, zero=(0, 3)).astype(dtype)
    it = index_dtype(engine)
    a, labels, w = (Placed(engine, h, layout) for h in (a_host, labels_host.astype(it), w_host))
    acc = engine.to_engine(np.array([2.0, 5.0], dtype))
    count_correct(engine, a.view, labels.view, engine.empty((rows,), it), acc[1:2], w.view,
                  engine.empty((rows,), np.bool_))
    hits = np.arange(rows) % 2 == 0                       # labelled_outputs: right on even rows
    got = engine.to_host(acc)
    assert got[0] == 2.0
    assert_close(got[1], 5.0 + w_host.astype(np.float64)[hits].sum(), dtype, scale=10)


# =========================================================================================
# the weighted gradient against finite differences (float64), on every engine
# =========================================================================================
PAIRINGS = {
    "softmax-crossentropy": ("softmax", "crossentropy"),       # the fused head, with labels
    "sigmoid-bce": ("sigmoid", "binary_crossentropy"),          # delta = w·(a - y)
    "linear-mse": ("linear", "quadratic"),
    "softmax-mae": ("softmax", "mae"),                          # not fused: w·∂C/∂a, then the JVP
    "tanh-logcosh": ("tanh", LogCosh()),                        # a cost made from its expressions
}


def problem(engine, out, cost, seed=0):
    rng = np.random.default_rng(seed)
    net = dn.Network(N_IN, [dn.Dense(5, "tanh"), dn.Dense(3, out)], engine=engine, dtype="float64", seed=seed)
    net.set_weights([(w, rng.uniform(-0.3, 0.3, b.shape)) for w, b in net.get_weights()])
    x = rng.normal(size=(N, N_IN))
    if cost == "crossentropy":
        y = rng.integers(0, 3, N)
    elif cost == "binary_crossentropy":
        y = rng.integers(0, 2, (N, 3)).astype(float)
        y[0] = 1 - y[1]
    elif cost == "mae":
        y = net.predict(x) + rng.choice([-1.0, 1.0], (N, 3)) * rng.uniform(0.3, 1.0, (N, 3))
    else:
        y = rng.normal(size=(N, 3))
    return net, x, y


def relative_error(analytic, numeric, masks) -> float:
    worst = 0.0
    for pa, pn, pm in zip(analytic, numeric, masks):
        for a, b, m in zip(pa, pn, pm):
            scale = max(np.linalg.norm(a[m]) + np.linalg.norm(b[m]), 1e-9)
            worst = max(worst, float(np.linalg.norm(a[m] - b[m]) / scale))
    return worst


def trainer_step_gradients(net, x, y, cost, w):
    """The gradients and acc of one weighted forward_backward as fit runs it (labels loaded:
    the fused softmax + cross-entropy head where the engine has it)."""
    e, dt = net.engine, net.dtype
    targets, labels = prepare_targets(y, x.shape[0], net.n_out)
    with TrainingNetwork(net, x.shape[0], cost) as tn:
        xs, ys = e.to_engine(np.asarray(x, dt)), e.to_engine(targets.astype(dt))
        ls = None if labels is None else e.to_engine(labels.astype(index_dtype(e)))
        ws = tn.sample_weights(w)
        tn.load(xs, ys, ls, np.arange(x.shape[0]).astype(index_dtype(e)), ws)
        tn.forward_backward(x.shape[0], with_labels=ls is not None)
        grads = [tuple(e.to_host(g) for g in layer.grads) for layer in tn.layers]
        return grads, tn.read_acc(), tn.head_weighted and ls is not None


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_weighted_gradient_matches_finite_differences(engine64, pairing):
    out, cost = PAIRINGS[pairing]
    net, x, y = problem(engine64, out, cost)
    w = weights(N)
    numeric, masks = numerical_gradients(net, x, y, cost=cost, sample_weight=w)
    assert relative_error(net.gradients(x, y, cost=cost, sample_weight=w), numeric, masks) < 1e-6
    assert dn.check_gradients(net, x, y, cost=cost, sample_weight=w) < 1e-6
    # the training step's own path (the fused head where there is one) differentiates the same loss
    grads, (loss_sum, hits), fused = trainer_step_gradients(net, x, y, cost, w)
    assert relative_error(grads, numeric, masks) < 1e-6
    if engine64.name == "cpu" and engine64.fused and cost == "crossentropy":
        assert fused, "the weighted softmax + cross-entropy kernel did not run"
    assert loss_sum / w.sum() == pytest.approx(net.training_loss(x, y, cost=cost, sample_weight=w), rel=1e-12)


# =========================================================================================
# what the weights mean: scikit-learn's normalisation
# =========================================================================================
def assert_same_gradients(got, expected, rtol=1e-10, atol=1e-13):
    for pg, pe in zip(got, expected):
        for g, e in zip(pg, pe):
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("pairing", ["softmax-crossentropy", "sigmoid-bce", "softmax-mae"])
def test_a_weight_of_zero_leaves_the_sample_out(engine64, pairing):
    out, cost = PAIRINGS[pairing]
    net, x, y = problem(engine64, out, cost, seed=1)
    w = weights(N, zero=(1, 4))
    keep = w > 0
    assert_same_gradients(net.gradients(x, y, cost=cost, sample_weight=w),
                          net.gradients(x[keep], y[keep], cost=cost, sample_weight=w[keep]))
    full, part = (net.evaluate(x, y, cost=cost, sample_weight=w),
                  net.evaluate(x[keep], y[keep], cost=cost, sample_weight=w[keep]))
    assert full["loss"] == pytest.approx(part["loss"], rel=1e-12)
    if full["accuracy"] is not None:
        assert full["accuracy"] == pytest.approx(part["accuracy"], rel=1e-12)


@pytest.mark.parametrize("pairing", ["softmax-crossentropy", "linear-mse"])
def test_a_weight_of_two_counts_the_sample_twice(engine64, pairing):
    out, cost = PAIRINGS[pairing]
    net, x, y = problem(engine64, out, cost, seed=2)
    w = np.ones(N)
    w[[0, 5]] = 2.0
    twice = np.r_[np.arange(N), [0, 5]]
    assert_same_gradients(net.gradients(x, y, cost=cost, sample_weight=w), net.gradients(x[twice], y[twice], cost=cost))
    for key, value in net.evaluate(x[twice], y[twice], cost=cost).items():
        assert net.evaluate(x, y, cost=cost, sample_weight=w)[key] == pytest.approx(value, rel=1e-12)
    # and through the training step: Σ w·loss and Σ w·hit over the batch
    _, (loss_sum, hits), _ = trainer_step_gradients(net, x, y, cost, w)
    scores = net.evaluate(x[twice], y[twice], cost=cost)
    assert loss_sum == pytest.approx(scores["loss"] * (N + 2), rel=1e-12)
    if scores["accuracy"] is not None:
        assert hits == pytest.approx(scores["accuracy"] * (N + 2), rel=1e-12)


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_uniform_weights_are_no_weights(engine64, pairing):
    out, cost = PAIRINGS[pairing]
    net, x, y = problem(engine64, out, cost, seed=3)
    plain = net.gradients(x, y, cost=cost)
    for c in (1.0, 3.0):
        assert_same_gradients(net.gradients(x, y, cost=cost, sample_weight=np.full(N, c)), plain)
        for key, value in net.evaluate(x, y, cost=cost).items():
            got = net.evaluate(x, y, cost=cost, sample_weight=np.full(N, c))[key]
            assert got == (None if value is None else pytest.approx(value, rel=1e-12))


@pytest.mark.parametrize("pairing", ["softmax-crossentropy", "sigmoid-bce", "softmax-mae", "tanh-logcosh"])
def test_training_with_weights_of_one_is_bit_identical(engine, pairing):
    """w = 1 multiplies by one and Σw = n exactly: every step's update is the unweighted one, bit for bit."""
    out, cost = PAIRINGS[pairing]
    trained = []
    for w in (None, np.ones(40)):
        rng = np.random.default_rng(7)
        net = dn.Network(N_IN, [dn.Dense(6, "relu"), dn.Dense(3, out)], engine=engine, seed=7)
        e = net.engine
        x = rng.normal(size=(40, N_IN))
        y = rng.integers(0, 3, 40) if cost in ("crossentropy", "mae") else rng.integers(0, 2, (40, 3))
        if not isinstance(cost, str):
            y = rng.normal(size=(40, 3))
        targets, labels = prepare_targets(y, 40, 3)
        tn = net.trainer(16, cost)
        opt = dn.Adam(0.01)
        opt.bind(e, tn.params, net.dtype)
        xs, ys = e.to_engine(x.astype(np.float32)), e.to_engine(targets.astype(np.float32))
        ls = None if labels is None else e.to_engine(labels.astype(index_dtype(e)))
        ws = None if w is None else tn.sample_weights(w)
        for start in (0, 16, 32, 8):
            n = tn.load(xs, ys, ls, np.arange(start, min(start + 16, 40)).astype(index_dtype(e)), ws)
            tn.step(n, opt, 0.0, ls is not None)
        trained.append(net.get_weights())
    assert_same_gradients(trained[1], trained[0], rtol=0, atol=0)


def test_weighted_scores_are_scikit_learns(engine64):
    net, x, y = problem(engine64, "softmax", "crossentropy", seed=4)
    w = weights(N)
    p = net.predict(x)
    scores = net.evaluate(x, y, sample_weight=w)
    assert scores["loss"] == pytest.approx(log_loss(y, p, sample_weight=w, labels=[0, 1, 2]), rel=1e-9)
    assert scores["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1), sample_weight=w), rel=1e-12)


def test_balanced_class_weights_are_scikit_learns():
    y = np.array([0, 0, 0, 0, 0, 2, 2, 1, 0, 2, 2, 2])
    classes = np.unique(y)
    per_class = compute_class_weight("balanced", classes=classes, y=y)
    w = resolve_weights(None, "balanced", y, y.shape[0], 4)      # class 3 has no sample
    np.testing.assert_allclose(w, per_class[np.searchsorted(classes, y)], rtol=1e-15)
    np.testing.assert_allclose(w, compute_sample_weight("balanced", y), rtol=1e-15)
    # a dict (classes left out weigh 1), multiplied with sample_weight, as scikit-learn does
    sw = np.linspace(0.5, 2.0, y.shape[0])
    got = resolve_weights(sw, {0: 0.5, 2: 3.0}, y, y.shape[0], 4)
    np.testing.assert_allclose(got, sw * compute_sample_weight({0: 0.5, 1: 1.0, 2: 3.0}, y), rtol=1e-15)


def test_class_weights_in_evaluate():
    net, x, y = problem("cpu", "softmax", "crossentropy", seed=5)
    expected = net.evaluate(x, y, sample_weight=compute_sample_weight("balanced", y))
    assert net.evaluate(x, y, class_weight="balanced") == pytest.approx(expected, rel=1e-12)
    one_hot = np.eye(3)[y]
    assert net.evaluate(x, one_hot, class_weight={1: 0.0}) == pytest.approx(
        net.evaluate(x[y != 1], y[y != 1]), rel=1e-12)


# =========================================================================================
# bad input
# =========================================================================================
@pytest.mark.parametrize("sample_weight, class_weight, match", [
    (np.r_[1.0, -1.0, np.ones(N - 2)], None, r"sample_weight must hold finite non-negative numbers, got -1.0 at "
                                             r"index 1"),
    (np.r_[1.0, np.nan, np.ones(N - 2)], None, r"sample_weight must hold finite non-negative numbers, got nan"),
    (np.r_[np.inf, np.ones(N - 1)], None, r"sample_weight must hold finite non-negative numbers, got inf"),
    (np.ones(N - 1), None, rf"sample_weight must be a vector of {N} non-negative numbers"),
    (np.ones((N, 1)), None, rf"sample_weight must be a vector of {N}"),
    (np.array(["a"] * N), None, "sample_weight must be a vector"),
    (np.zeros(N), None, "sample_weight gives every sample a weight of 0"),
    (None, {3: 2.0, 7: 1.0}, r"class_weight names classes that do not exist: 3, 7 \(the network has classes 0 to 2\)"),
    (None, {-1: 2.0}, "class_weight names classes that do not exist: -1"),
    (None, {"cat": 2.0}, "class_weight names classes that do not exist: 'cat'"),
    (None, {0: -1.0}, r"class_weight\[0\] must be a finite non-negative number"),
    (None, {0: float("nan")}, r"class_weight\[0\] must be a finite non-negative number"),
    (None, "weighted", "class_weight must be a dict {class index: weight} or 'balanced'"),
    (None, [1.0, 2.0, 3.0], "class_weight must be a dict"),
    (None, {0: 0.0, 1: 0.0, 2: 0.0}, "class_weight gives every sample a weight of 0"),
    (np.r_[0.0, np.ones(N - 1)], {0: 0.0, 1: 0.0, 2: 0.0}, "sample_weight and class_weight give every sample"),
])
def test_bad_weights_are_refused(sample_weight, class_weight, match):
    net, x, y = problem("cpu", "softmax", "crossentropy")
    with pytest.raises(DensennError, match=match):
        net.evaluate(x, y, sample_weight=sample_weight, class_weight=class_weight)
    if class_weight is None:
        with pytest.raises(DensennError, match=match):
            net.gradients(x, y, sample_weight=sample_weight)


def test_class_weight_needs_class_labels():
    net, x, y = problem("cpu", "linear", "quadratic")
    with pytest.raises(DensennError, match="class_weight needs class labels in y"):
        net.evaluate(x, y, class_weight="balanced")
    with pytest.raises(DensennError, match="validation class_weight needs class labels"):
        resolve_weights(None, "balanced", None, N, 3, name_prefix="validation ")


# =========================================================================================
# the training network: Σw = 0, partial batches, no allocation
# =========================================================================================
def test_a_batch_whose_weights_sum_to_zero_is_skipped():
    net, x, y = problem("cpu", "softmax", "crossentropy", seed=6)
    e = net.engine
    targets, labels = prepare_targets(y, N, 3)
    tn = net.trainer(4, "crossentropy")
    opt = dn.Adam(0.01)
    opt.bind(e, tn.params, net.dtype)
    w = np.ones(N)
    w[:4] = 0.0
    ws = tn.sample_weights(w)
    xs, ys, ls = e.to_engine(x), e.to_engine(targets), e.to_engine(labels.astype(index_dtype(e)))
    before = net.get_weights()
    tn.read_acc(reset=True)
    tn.load(xs, ys, ls, np.arange(4), ws)
    assert tn.w_sum == 0.0
    tn.step(4, opt, 0.0, True)                            # skipped: as if the batch were left out
    assert_same_gradients(net.get_weights(), before, rtol=0, atol=0)
    tn.forward_backward(4, True)
    for layer in tn.layers:                               # the gradient of a zero-weight batch is 0, not NaN
        assert not np.any(layer.dw) and not np.any(layer.db)
    assert tn.read_acc() == (0.0, 0.0)
    assert tn.loss(4) == 0.0
    # a partial batch with weights: the step trains, and acc holds Σ w·loss and Σ w·hit of its rows
    expected = net.evaluate(x[3:6], y[3:6], sample_weight=w[3:6])
    assert tn.load(xs, ys, ls, np.arange(3, 6), ws) == 3 and tn.w_sum == 2.0
    tn.step(3, opt, 0.0, True)
    loss_sum, hits = tn.read_acc()
    assert loss_sum == pytest.approx(2.0 * expected["loss"], rel=1e-12)
    assert hits == pytest.approx(2.0 * expected["accuracy"], rel=1e-12)
    assert not np.allclose(net.get_weights()[0][0], before[0][0])
    assert ws.total == w.sum()
    e.release(ws.on_engine)


@pytest.mark.usefixtures("one_blas_thread")
@pytest.mark.parametrize("engine_name", mem.ENGINES)
@pytest.mark.parametrize("acts, cost", [
    (("relu", "relu", "softmax"), "crossentropy"),            # the fused head (cpu), its parts (cpu:numpy)
    (("tanh", "sigmoid", "sigmoid"), "binary_crossentropy"),
    (("elu", "leaky_relu", "linear"), "quadratic"),
    (("relu", "relu", "softmax"), "mae"),                     # not fused: w·∂C/∂a
], ids=["softmax-ce", "sigmoid-bce", "linear-mse", "softmax-mae"])
def test_a_weighted_training_step_allocates_nothing(engine_name, acts, cost):
    """As tests/test_memory.py measures an unweighted step, with the batches' weights gathered."""
    for _ in range(2):                    # a real allocation shows in both of two fresh measurements
        results = {}
        for name, cfg in (("small", mem.SMALL), ("large", mem.LARGE)):
            _, tn, opt, data = mem.make_training(engine_name, "adam", **cfg, acts=acts, cost=cost)
            ws = tn.sample_weights(np.random.default_rng(2).uniform(0.0, 2.0, data[0].shape[0]))
            load = tn.load
            tn.load = lambda xs, ys, ls, idx, load=load, ws=ws: load(xs, ys, ls, idx, ws)
            results[name] = mem.traced_step_memory(tn, opt, data, cfg["batch"] - 7)
            assert tn.w_sum is not None and tn.w_sum > 0
        (small_peak, small_now), (large_peak, large_now) = results["small"], results["large"]
        if (large_peak < mem.LIMIT and large_peak <= small_peak + 64 and max(small_now, large_now) < 128):
            return
    pytest.fail(f"a weighted step allocates: peaks {small_peak} B (small), {large_peak} B (large); "
                f"left behind {small_now} B, {large_now} B")
