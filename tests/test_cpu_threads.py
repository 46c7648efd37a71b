"""The CPU engine's large passes in row blocks on several threads (densenn.backend.cpu.threads).

Real passes only split above a million elements; here the threshold is lowered so
that small arrays split too, and every split operation must give what the same
operation gives in one call.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import densenn as dn
from densenn.backend.cpu import CPUEngine
from densenn.backend.cpu import threads as cpu_threads
from densenn.backend.cpu.fused import AVAILABLE as NUMBA
from densenn.nn.activation import ActivationFn, get_activation
from densenn.optim import adam_update, sgd_update

FUSED = [True, False] if NUMBA else [False]


@pytest.fixture
def split_everything(monkeypatch):
    monkeypatch.setattr(cpu_threads, "MIN_SPLIT", 1)


def engines(fused):
    """(whole, split): the same engine kind, one never splitting, one in 3 blocks."""
    whole, split = CPUEngine(fused=fused), CPUEngine(fused=fused)
    whole._blocks = cpu_threads.RowBlocks(threads=1)
    split._blocks = cpu_threads.RowBlocks(threads=3)
    return whole, split


def test_blocks_cover_the_range_once_and_run_on_several_threads():
    blocks = cpu_threads.RowBlocks(threads=3)
    seen, lock = [], threading.Lock()

    def record(lo, hi):
        with lock:
            seen.append((lo, hi, threading.get_ident()))

    blocks.run(record, 10)
    assert sorted((lo, hi) for lo, hi, _ in seen) == [(0, 3), (3, 6), (6, 10)]
    assert len({ident for *_, ident in seen}) == 3
    seen.clear()
    blocks.run(record, 2)                       # fewer rows than threads: one block per row
    assert sorted((lo, hi) for lo, hi, _ in seen) == [(0, 1), (1, 2)]


def test_splits_only_large_passes_with_more_than_one_core():
    assert not cpu_threads.RowBlocks(threads=2).splits(np.empty((128, 256)))
    assert cpu_threads.RowBlocks(threads=2).splits(np.empty((2048, 1024), np.float32))
    assert not cpu_threads.RowBlocks(threads=1).splits(np.empty((2048, 1024), np.float32))


def test_an_error_in_a_worker_block_reaches_the_caller_after_every_block():
    blocks = cpu_threads.RowBlocks(threads=3)
    done = []

    def fail_first(lo, hi):
        if lo == 0:
            raise ValueError("block 0")
        done.append(lo)

    with pytest.raises(ValueError, match="block 0"):
        blocks.run(fail_first, 9)
    assert sorted(done) == [3, 6]
    done.clear()
    blocks.run(lambda lo, hi: done.append(lo), 9)    # the workers are still there afterwards
    assert sorted(done) == [0, 3, 6]


def test_an_interrupt_is_raised_only_after_every_block_has_finished(monkeypatch):
    """Ctrl-C during a split pass (in the caller's own block, or while it waits for a worker)
    must not leave a worker's block running into the next call."""
    import time

    blocks = cpu_threads.RowBlocks(threads=2)
    finished = []

    def interrupted_here(lo, hi):
        if lo == 0:                      # the worker's block
            time.sleep(0.2)
            finished.append(lo)
        else:                            # the caller's block
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        blocks.run(interrupted_here, 4)
    assert finished == [0]

    worker = blocks._workers[0]
    take = worker._done.acquire
    calls = []

    def interrupted_while_waiting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return take(*args, **kwargs)

    monkeypatch.setattr(worker._done, "acquire", interrupted_while_waiting)
    finished.clear()

    def slow_worker_block(lo, hi):
        if lo == 0:
            time.sleep(0.2)
            finished.append(lo)

    with pytest.raises(KeyboardInterrupt):
        blocks.run(slow_worker_block, 4)
    assert finished == [0]
    seen = []
    blocks.run(lambda lo, hi: seen.append(lo), 4)     # the next call pairs up with its own blocks
    assert sorted(seen) == [0, 2]


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "softplus", "elu", "softmax"])
def test_split_activation_passes_equal_one_call(split_everything, fused, name):
    whole, split = engines(fused)
    act = get_activation(name)
    r = np.random.default_rng(0)
    z0, b, g = r.normal(size=(37, 11)) * 3, r.normal(size=11), r.normal(size=(37, 11))
    results = []
    for e in (whole, split):
        work = ActivationFn.for_layer(act, e, 37, 11, np.float64).work
        z, a = z0.copy(), np.empty_like(z0)
        act.bias_activ(e, z, b, a, work)
        d = z.copy()
        act.delta(e, d, g.copy(), work)
        d_db, db = z.copy(), np.full(11, np.nan)        # delta with ∇b: fused whole, two passes split
        act.delta(e, d_db, g.copy(), work, db)
        p = z.copy()
        act.prime(e, p, work)
        a2 = np.empty_like(z0)
        act.activ(e, z0, a2, work)
        results.append((z, a, d, d_db, db, p, a2))
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(results[0][3], results[0][2])
    np.testing.assert_allclose(results[0][4], results[0][2].sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("fused", FUSED)
def test_split_sums_gathers_and_updates_equal_one_call(split_everything, fused):
    whole, split = engines(fused)
    r = np.random.default_rng(1)
    x, idx = r.normal(size=(40, 13)), r.integers(0, 40, 17)
    w0, g0 = r.normal(size=(9, 13)), r.normal(size=(9, 13))
    results = []
    for e in (whole, split):
        db = np.empty(13)
        e.sum_rows(x, db)
        rows = np.empty((17, 13))
        e.take_rows(x, idx, rows)
        w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
        for _ in range(3):
            adam_update(e, w, g0.copy(), m, v, 1e-2, 1e-8, 0.9, 0.999, 0.01, 0.0, np.empty_like(w0))
        w2, vel = w0.copy(), np.zeros_like(w0)
        for _ in range(3):
            sgd_update(e, w2, g0.copy(), vel, 0.1, 0.9, True, 0.01)
        results.append((db, rows, w, m, v, w2, vel))
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(results[1][1], x[idx])


def test_training_with_split_passes_equals_training_without(split_everything):
    r = np.random.default_rng(2)
    x, y = r.normal(size=(50, 6)), r.integers(0, 3, 50)
    weights = []
    for threads in (1, 3):
        net = dn.Network(6, [dn.Dense(8, "tanh"), dn.Dense(5, "relu"), dn.Dense(3, "softmax")], dtype="float64")
        net.engine._blocks = cpu_threads.RowBlocks(threads=threads)
        try:
            net.fit(x, y, epochs=2, batch_size=16, optimizer=dn.Adam(0.01), progress=False)
        finally:
            net.engine._blocks = cpu_threads.RowBlocks()
        weights.append(net.get_weights())
    for (w, b), (rw, rb) in zip(*weights):
        np.testing.assert_allclose(w, rw, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b, rb, rtol=1e-12, atol=1e-14)


def test_thread_count_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.delenv("DENSENN_THREADS", raising=False)
    assert CPUEngine().threads == cpu_threads.usable_cores()
    assert CPUEngine(threads=3).threads == 3
    monkeypatch.setenv("DENSENN_THREADS", "1")
    e = CPUEngine()
    assert e.threads == 1 and "threads=1" in repr(e)
    e.set_threads(4)
    assert e.threads == 4
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("DENSENN_THREADS", bad)
        with pytest.raises(dn.DensennError, match=r"\$DENSENN_THREADS must be a positive integer"):
            CPUEngine()
    with pytest.raises(dn.DensennError, match="threads must be a positive integer"):
        CPUEngine(threads=0)


def _train_and_report(queue):
    # GEMMs of 256×256×256: large enough for MKL to run them on its OpenMP threads
    r = np.random.default_rng(3)
    x, y = r.normal(size=(512, 256)), r.integers(0, 3, 512)
    net = dn.Network(256, [dn.Dense(256, "tanh"), dn.Dense(3, "softmax")], dtype="float64")
    net.fit(x, y, epochs=2, batch_size=256, optimizer=dn.Adam(0.01), progress=False)
    queue.put(net.get_weights()[0][0].sum())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork() on this platform")
def test_a_forked_child_trains_after_the_parent_used_every_thread_pool(split_everything, monkeypatch):
    """multiprocessing's "fork" children inherit none of the parent's threads: the row-block
    workers, Numba's and MKL's OpenMP threads. A child that trained after the parent had used
    them waited for them forever; now it recreates or does without them."""
    import multiprocessing

    from densenn.backend.cpu import fused as cpu_fused

    monkeypatch.setattr(cpu_fused, "OMP_MIN", 1)        # the OpenMP updates run for any size
    queue = multiprocessing.get_context("fork").SimpleQueue()
    _train_and_report(queue)                            # the parent starts every pool it has
    expected = queue.get()
    child = multiprocessing.get_context("fork").Process(target=_train_and_report, args=(queue,))
    child.start()
    child.join(90)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in its first training step")
    assert child.exitcode == 0
    assert queue.get() == pytest.approx(expected, rel=1e-12)
