"""Reliability: threads, values at the edge of the dtype, divergence in the last step, API edges.

Each test here reproduces a defect found by probing densenn as a careful user would;
it failed before the fix it guards. Model files are covered in test_reliability_io.py,
the command line in test_reliability_cli.py.
"""
from __future__ import annotations

import multiprocessing
import pickle
import threading

import numpy as np
import pytest
from conftest import load_engine

import densenn as dn
from densenn.backend import get_engine
from densenn.backend.cpu import CPUEngine
from densenn.nn.activation import ACTIVATIONS, ActivationFn

ARCH = [dn.Dense(256, "relu"), dn.Dense(256, "relu"), dn.Dense(10, "softmax")]


def _in_threads(work, n: int) -> list:
    """Run work(i) for i < n on n threads started together; re-raise the first error."""
    errors: list = []
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:        # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


# -- threads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cpu", "cpu:numpy", "opencl"])
def test_concurrent_predict_on_different_networks_equals_one_thread(name):
    """Two networks on one engine predicting in two threads: the engine's row-block workers
    served both callers at once and mixed their blocks (13 of 80 results wrong, up to 3601
    of 8192 classes changed). Inputs large enough that the passes are split (8192×256)."""
    engine = load_engine(name)
    x = np.random.default_rng(0).standard_normal((8192, 64)).astype(np.float32)
    nets = [dn.Network(64, ARCH, engine=engine, seed=s) for s in (1, 2)]
    expected = [net.predict(x) for net in nets]
    rounds = 12 if name == "opencl" else 25
    wrong = []

    def work(i):
        for _ in range(rounds):
            if not np.array_equal(nets[i].predict(x), expected[i]):
                wrong.append(i)

    _in_threads(work, 2)
    assert wrong == []


def test_concurrent_predict_and_evaluate_on_one_network():
    net = dn.Network(64, ARCH, seed=3)
    r = np.random.default_rng(1)
    x = r.standard_normal((8192, 64)).astype(np.float32)
    y = r.integers(0, 10, 8192)
    expected_p, expected_e = net.predict(x), net.evaluate(x, y)
    results = []

    def work(i):
        for _ in range(15):
            results.append(np.array_equal(net.predict(x), expected_p) if i % 2 == 0
                           else net.evaluate(x, y) == expected_e)

    _in_threads(work, 4)
    assert len(results) == 60 and all(results)


@pytest.mark.parametrize("optimizer", [dn.Adam, lambda lr: dn.SGD(lr, momentum=0.9), dn.SGD])
def test_two_networks_train_in_two_threads_while_a_third_predicts(optimizer):
    """Training writes the engine's shared scratch (the update kernels' scalars, the row blocks'
    column sums): two fits at once with different rates read each other's scalars. Neither
    they nor a predict beside them may disturb one another."""
    r = np.random.default_rng(2)
    x = r.standard_normal((4096, 64)).astype(np.float32)
    y = r.integers(0, 10, 4096)
    rates = (1e-3, 3e-2)

    def train(i):
        net = dn.Network(64, ARCH, seed=5 + i)
        net.fit(x, y, epochs=3, batch_size=512, optimizer=optimizer(rates[i]), progress=False)
        return net.get_weights()

    expected = [train(0), train(1)]
    other = dn.Network(64, ARCH, seed=6)
    other_expected = other.predict(x)
    outcome = {}

    def work(i):
        if i < 2:
            outcome[i] = train(i)
        else:
            outcome["predictions"] = [np.array_equal(other.predict(x), other_expected) for _ in range(10)]

    _in_threads(work, 3)
    assert all(outcome["predictions"])
    for i in range(2):
        for (w, b), (ew, eb) in zip(outcome[i], expected[i]):
            # ∇b's column sums may be added in another order when the row blocks were busy
            np.testing.assert_allclose(w, ew, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(b, eb, rtol=1e-4, atol=1e-6)


def test_two_fits_of_one_network_in_two_threads_take_turns():
    """fit on one network from two threads: one after the other (its trainer and optimizer are
    the network's), with the same result as two fits in a row."""
    r = np.random.default_rng(4)
    x = r.standard_normal((512, 64)).astype(np.float32)
    y = r.integers(0, 10, 512)
    one = dn.Network(64, ARCH, seed=7)
    for _ in range(2):
        one.fit(x, y, epochs=2, batch_size=64, optimizer=dn.SGD(0.01), progress=False)
    two = dn.Network(64, ARCH, seed=7)
    _in_threads(lambda i: two.fit(x, y, epochs=2, batch_size=64, optimizer=dn.SGD(0.01), progress=False), 2)
    for (w, b), (ew, eb) in zip(two.get_weights(), one.get_weights()):
        np.testing.assert_allclose(w, ew, rtol=1e-5, atol=1e-6)


def test_row_blocks_used_from_two_threads_cover_every_row():
    from densenn.backend.cpu.threads import RowBlocks

    blocks = RowBlocks(threads=2)
    out = [np.zeros(100_000, np.int64) for _ in range(2)]

    def work(i):
        for k in range(1, 200):
            def fill(lo, hi, k=k):
                out[i][lo:hi] = k
            blocks.run(fill, out[i].shape[0])
            assert (out[i] == k).all()

    _in_threads(work, 2)


def test_the_engine_is_created_once_when_threads_ask_at_the_same_time(monkeypatch):
    from densenn import backend

    monkeypatch.setattr(backend, "_engines", {})
    got = []
    _in_threads(lambda i: got.append(backend.get_engine("cpu:numpy")), 4)
    assert len({id(e) for e in got}) == 1


def test_predict_is_bitwise_the_same_for_any_thread_count():
    """What the README promises: predict (elementwise passes in row blocks, no sums across
    rows) does not depend on the row-block threads."""
    x = np.random.default_rng(8).standard_normal((8192, 64)).astype(np.float32)
    outputs = []
    for threads in (1, 2, 3):
        net = dn.Network(64, ARCH, engine=CPUEngine(threads=threads), seed=9)
        outputs.append(net.predict(x))
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])


def test_training_is_bitwise_reproducible_from_the_seed():
    r = np.random.default_rng(10)
    x = r.standard_normal((3000, 64)).astype(np.float32)
    y = r.integers(0, 10, 3000)
    runs = []
    for _ in range(2):
        net = dn.Network(64, ARCH, seed=11)
        net.fit(x, y, epochs=2, batch_size=1024, progress=False)
        runs.append(net.get_weights())
    for (w1, b1), (w2, b2) in zip(*runs):
        assert np.array_equal(w1, w2) and np.array_equal(b1, b2)


# -- a schedule reused across fits -----------------------------------------------------------------
def test_an_optimizer_with_a_schedule_can_be_reused_by_another_fit():
    """The horizon of a schedule without one was set by the first fit only: 2 epochs, then 5
    more with the same optimizer trained at lr [0.001, 0.0005, 0, 0, 0]."""
    r = np.random.default_rng(0)
    x, y = r.standard_normal((64, 8)), r.integers(0, 3, 64)
    net = dn.Network(8, [dn.Dense(16), dn.Dense(3, "softmax")], seed=0)
    opt = dn.Adam(1e-3, schedule="cosine")
    first = net.fit(x, y, epochs=2, optimizer=opt, progress=False)["lr"]
    second = net.fit(x, y, epochs=5, optimizer=opt, progress=False)["lr"]
    assert first == pytest.approx([1e-3, 5e-4])
    assert second == pytest.approx([1e-3 * 0.5 * (1 + np.cos(np.pi * e / 5)) for e in range(5)])
    assert min(second) > 0
    # a horizon the user gave stays as given
    fixed = dn.Adam(1e-3, schedule=dn.CosineDecay(total_epochs=10))
    net.fit(x, y, epochs=2, optimizer=fixed, progress=False)
    assert net.fit(x, y, epochs=2, optimizer=fixed, progress=False)["lr"][1] == \
        pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi / 10)))


# -- values at the edge of the dtype ---------------------------------------------------------------
@pytest.mark.parametrize("value", [1e39, -1e39, 1e300])
def test_values_beyond_float32_are_refused_after_the_cast(value):
    """float64 1e39 is finite but inf in float32: it passed the finite check (made before the
    cast) and fit trained on inf."""
    net = dn.Network(4, [dn.Dense(3, "softmax")], dtype="float32", seed=0)
    x = np.ones((5, 4))
    x[2, 1] = value
    y = np.zeros(5, int)
    for call in (lambda: net.fit(x, y, epochs=1, progress=False), lambda: net.predict(x),
                 lambda: net.evaluate(x, y), lambda: net.gradients(x, y),
                 lambda: net.fit(np.ones((5, 4)), y, epochs=1, progress=False, validation_data=(x, y))):
        with pytest.raises(dn.DensennError, match=r"1 NaN or infinite value.*range of float32"):
            call()
    # the same input is within a float64 network's range, and accepted there
    assert dn.Network(4, [dn.Dense(3, "softmax")], dtype="float64").predict(x).shape == (5, 3)


def test_regression_targets_beyond_float32_are_refused():
    net = dn.Network(2, [dn.Dense(1, "linear")], dtype="float32")
    with pytest.raises(dn.DensennError, match="y contains 1 NaN or infinite"):
        net.fit(np.ones((3, 2)), np.array([1.0, 2.0, 1e39]), epochs=1, progress=False)


def test_predict_classes_refuses_nan_outputs_instead_of_answering_class_0():
    """3e38 is a float32, but overflows inside the network: predict gives NaN, and
    predict_classes answered class 0 for it."""
    net = dn.Network(4, [dn.Dense(8, "relu"), dn.Dense(3, "softmax")], seed=0)
    x = np.zeros((4, 4), np.float32)
    x[1] = 3e38
    assert np.isnan(net.predict(x)[1]).all()
    with pytest.raises(dn.DensennError, match="NaN for 1 of 4 rows of x .*row 1"):
        net.predict_classes(x)
    assert net.predict_classes(x[[0, 2, 3]]).shape == (3,)


def _activation_outputs(engine, act, z):
    e = engine
    n, m = z.shape
    fn = ActivationFn.for_layer(act, e, n, m, np.float32)
    zs, a = e.to_engine(z.copy()), e.empty(z.shape, np.float32)
    act.bias_activ(e, zs, e.zeros((m,), np.float32), a, fn.work)
    zd, g = e.to_engine(z.copy()), e.to_engine(np.full_like(z, 0.5))
    act.delta(e, zd, g, fn.work)
    return e.to_host(a), e.to_host(zd)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("act_name", sorted(ACTIVATIONS))
def test_every_engine_treats_nan_and_inf_the_same(available_engines, act_name):
    """The fused CPU ReLU (and OpenCL's) turned NaN into 0 where cpu:numpy kept it, so a
    network's result depended on the engine."""
    act = dn.get_activation(act_name)
    z = np.tile(np.array([np.nan, 1.5, -1.5, 0.0, np.inf, -np.inf, 30.0, -30.0], np.float32), (3, 1))
    z[1, :] = z[0, ::-1]
    reference = _activation_outputs(get_engine("cpu:numpy"), act, z)
    assert np.isnan(reference[0][0, 0])                     # NaN in, NaN out
    assert np.isnan(reference[1][0, 0]) or act_name == "linear"     # (linear's f' is 1 everywhere)
    for name, engine in available_engines.items():
        for got, want in zip(_activation_outputs(engine, act, z), reference):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True,
                                       err_msg=f"{act_name} on {name}")


# -- divergence in the last step --------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", [lambda: dn.SGD(1e300), lambda: dn.SGD(1e300, momentum=0.5)])
def test_divergence_in_the_last_update_is_caught(optimizer):
    """The loss checked is taken before each update: one epoch of one batch with lr 1e300
    (inf in float32) returned normally with NaN weights (and save wrote them)."""
    r = np.random.default_rng(0)
    x, y = r.standard_normal((32, 4)), r.integers(0, 3, 32)
    net = dn.Network(4, [dn.Dense(8, "tanh"), dn.Dense(3, "softmax")], dtype="float32", seed=0)
    before = net.get_weights()
    with pytest.raises(dn.TrainingDiverged, match="weights became NaN or infinite in epoch 1"):
        net.fit(x, y, epochs=1, batch_size=32, optimizer=optimizer(), progress=False)
    for (w, b), (w0, b0) in zip(net.get_weights(), before):
        assert np.array_equal(w, w0) and np.array_equal(b, b0)


def test_divergence_check_on_a_device_engine(available_engines):
    if "opencl" not in available_engines:
        pytest.skip("engine 'opencl' unavailable here")
    r = np.random.default_rng(0)
    x, y = r.standard_normal((32, 4)), r.integers(0, 3, 32)
    net = dn.Network(4, [dn.Dense(8, "tanh"), dn.Dense(3, "softmax")], engine="opencl", seed=0)
    with pytest.raises(dn.TrainingDiverged, match="weights became NaN"):
        net.fit(x, y, epochs=1, batch_size=32, optimizer=dn.SGD(1e300), progress=False)


# -- API edges --------------------------------------------------------------------------------------
def test_a_callback_that_cannot_be_called_fails_before_training():
    net = dn.Network(4, [dn.Dense(3, "softmax")])
    x, y = np.ones((10, 4)), np.zeros(10, int)
    for bad, match in (([print, 3], r"callbacks\[1\] must be callable"), (5, "callbacks must be a list")):
        with pytest.raises(dn.DensennError, match=match):
            net.fit(x, y, epochs=3, callbacks=bad, progress=False)
        assert net.history is None or net.history.epochs == 0
    seen = []
    net.fit(x, y, epochs=2, callbacks=lambda epoch, logs: seen.append(epoch), progress=False)
    assert seen == [0, 1]


def test_a_released_network_says_so():
    net = dn.Network(4, [dn.Dense(3, "softmax")])
    net.release()
    x, y = np.ones((2, 4)), np.zeros(2, int)
    for call in (lambda: net.predict(x), lambda: net.predict_classes(x), lambda: net.evaluate(x, y),
                 lambda: net.fit(x, y, progress=False), lambda: net.gradients(x, y), net.get_weights,
                 lambda: net.set_weights([]), lambda: net.to_engine("cpu"), lambda: pickle.dumps(net)):
        with pytest.raises(dn.DensennError, match="this network was released"):
            call()


def test_timedelta_and_datetime_inputs_are_refused():
    net = dn.Network(2, [dn.Dense(2, "softmax")])
    for bad in (np.zeros((3, 2), "m8[s]"), np.zeros((3, 2), "M8[D]")):
        with pytest.raises(dn.DensennError, match="x must be numeric"):
            net.predict(bad)
    with pytest.raises(dn.DensennError, match="y must be numeric"):
        net.fit(np.zeros((3, 2)), np.zeros(3, "m8[s]"), progress=False)


def _predict_rows(args):
    net, x = args
    return net.predict(x)


def test_a_network_pickles_after_a_large_batch_fit_and_serves_a_process_pool():
    """After a fit whose passes were split over the row-block threads the engine held locks,
    and pickling the network failed ("cannot pickle '_thread.lock' object"), which broke
    multiprocessing.Pool.map(net.predict, ...)."""
    r = np.random.default_rng(0)
    x = r.standard_normal((8192, 64)).astype(np.float32)
    y = r.integers(0, 10, 8192)
    net = dn.Network(64, ARCH, seed=1)
    net.fit(x, y, epochs=1, batch_size=8192, progress=False)
    copy = pickle.loads(pickle.dumps(net))
    assert copy.config() == net.config() and copy.engine is net.engine
    np.testing.assert_array_equal(copy.predict(x), net.predict(x))
    assert copy.history.to_dict() == net.history.to_dict()
    # the shuffling stream goes on where it was: both train the same from here
    for n in (net, copy):
        n.fit(x[:512], y[:512], epochs=1, batch_size=64, progress=False)
    np.testing.assert_array_equal(copy.get_weights()[0][0], net.get_weights()[0][0])
    chunks = [x[:100], x[100:300]]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        got = pool.map(_predict_rows, [(net, c) for c in chunks])
    for g, c in zip(got, chunks):
        np.testing.assert_allclose(g, net.predict(c), rtol=1e-6)


@pytest.mark.slow
def test_a_forked_child_trains_after_the_memory_tests():
    """The fork test passed alone but its child hung in its first MKL GEMM when the memory
    tests (MKL limited to one thread by threadpoolctl around each) had run before it in the
    same process: the forking thread's own MKL setting overrode the child's global one."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    fork_test = "test_cpu_threads.py::test_a_forked_child_trains_after_the_parent_used_every_thread_pool"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_memory.py::test_nbytes_accounts_for_every_part", fork_test],
                          cwd=here, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout
