"""The CPU engine's fast paths against its reference path.

``cpu`` runs Numba's fused kernels and, where it is installed, Intel MKL's GEMM;
``cpu:numpy`` runs NumPy kernels and SciPy's OpenBLAS. The contract suite checks
every operation on both; these tests check what only the fast path has: the fused
softmax + cross-entropy output kernel, the flushing of subnormal optimizer moments,
and the choice of BLAS.
"""
from __future__ import annotations

import numpy as np
import pytest

import densenn as dn
from densenn.backend import get_engine
from densenn.backend.cpu import CPUEngine
from densenn.backend.cpu import fused as cpu_fused
from densenn.backend.cpu import mkl as cpu_mkl
from densenn.errors import DensennError
from densenn.nn.network import TrainingNetwork, prepare_targets
from densenn.optim import ADAM_UPDATE, NESTEROV_UPDATE, adam_update, sgd_update

needs_numba = pytest.mark.skipif(not cpu_fused.AVAILABLE, reason="the fused kernels need Numba (not installed)")
HAS_MKL = cpu_mkl.load() is not None
numba_float32 = cpu_fused.numba.float32 if cpu_fused.AVAILABLE else None


def _trainer(engine, seed=0, batch=16, dtype="float64"):
    net = dn.Network(12, [dn.Dense(9, "relu"), dn.Dense(7, "tanh"), dn.Dense(5, "softmax")], engine=engine,
                     dtype=dtype, seed=seed)
    return net, TrainingNetwork(net, batch, "crossentropy")


@needs_numba
@pytest.mark.parametrize("rows", [16, 11])
def test_fused_head_equals_the_separate_steps(rows):
    """softmax_crossentropy gives the deltas, gradients, loss and hits of bias_activ + cost + diff + Σ rows."""
    r = np.random.default_rng(5)
    x = r.normal(size=(40, 12))
    labels = r.integers(0, 5, size=40)
    labels[:3] = [0, 4, 2]
    targets, lab = prepare_targets(labels, 40, 5)
    idx = r.permutation(40)[:rows]
    results = []
    for head in (True, False):
        net, tn = _trainer("cpu")
        assert tn.head      # softmax + cross-entropy on the fused engine
        tn.head = head
        e = net.engine
        xs, ys, ls = e.to_engine(x), e.to_engine(targets), e.to_engine(lab.astype(np.intp))
        tn.load(xs, ys, ls, idx.astype(np.intp))
        tn.forward_backward(rows, with_labels=True)
        loss, hits = tn.read_acc()
        results.append(([l.dw.copy() for l in tn.layers] + [l.db.copy() for l in tn.layers]
                        + [tn.layers[-1].a[:rows].copy()], loss, hits))
    (fused, loss_f, hits_f), (plain, loss_p, hits_p) = results
    for got, want in zip(fused, plain):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert loss_f == pytest.approx(loss_p, rel=1e-12)
    assert hits_f == hits_p and 0 < hits_f < rows or rows < 5


@needs_numba
def test_fit_on_the_fast_and_the_reference_engine_agree(digits):
    """Same seed, same data: cpu (fused head, Numba, MKL where installed) and cpu:numpy train the same."""
    x, y = digits
    runs = []
    for engine in ("cpu", "cpu:numpy"):
        net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "softmax")], engine=engine, dtype="float64", seed=2)
        h = net.fit(x[:600], y[:600], epochs=3, batch_size=50, optimizer=dn.Adam(1e-3), progress=False)
        runs.append((h, net.get_weights()))
    (h1, w1), (h2, w2) = runs
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-9)
    assert h1["accuracy"] == h2["accuracy"]
    for (wa, ba), (wb, bb) in zip(w1, w2):
        np.testing.assert_allclose(wa, wb, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(ba, bb, rtol=1e-8, atol=1e-10)


@pytest.fixture(scope="module")
def digits():
    from densenn.datasets import load_digits

    d = load_digits()
    return np.asarray(d.x_train, np.float64), np.asarray(d.y_train)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_and_momentum_flush_subnormal_moments(dtype):
    """Moments that decay below the smallest normal number become 0 (x86 is ~100x slower on subnormals)."""
    e = get_engine("cpu")
    tiny = np.finfo(dtype).tiny
    n = 6
    w = np.ones(n, dtype)
    g = np.zeros(n, dtype)
    m = np.array([tiny * 0.5, tiny * 1.05, -tiny * 1.05, 1.0, tiny * 4, 0.0], dtype)
    v = np.array([tiny * 0.5, tiny * 1.05, 1.0, 1.0, tiny * 1.0005, 0.0], dtype)
    adam_update(e, w, g.copy(), m, v, 1e-3, 1e-8, 0.9, 0.999, 0.0, 0.0, None)
    # m: 0.9·(0.5, ±1.05)·tiny fall below tiny → 0, 0.9·4·tiny stays
    assert m[0] == 0 and m[1] == 0 and m[2] == 0 and m[3] == pytest.approx(0.9) and m[4] > tiny
    # v: 0.999·0.5·tiny and 0.999·1.0005·tiny → 0, 0.999·1.05·tiny stays
    assert v[0] == 0 and v[1] > tiny and v[4] == 0 and v[5] == 0
    vel = np.array([tiny * 0.5, 2 * tiny, 1.0], dtype)
    sgd_update(e, np.ones(3, dtype), np.zeros(3, dtype), vel, 0.1, 0.9, False, 0.0)
    assert vel[0] == 0 and vel[1] > tiny and vel[2] == pytest.approx(0.9)


@needs_numba
def test_fused_optimizers_compute_float32_in_float32():
    """Every named variable of the float32 Adam and momentum kernels is float32: one float64
    constant (a 0.0 literal in the flush) once made Numba run Adam in float64, 2x slower."""
    e = get_engine("cpu")
    f = np.float32
    adam_update(e, np.ones(4, f), np.ones(4, f), np.ones(4, f), np.ones(4, f), 1e-3, 1e-8, 0.9, 0.999, 0.0, 0.0, None)
    sgd_update(e, np.ones(4, f), np.ones(4, f), np.ones(4, f), 0.1, 0.9, True, 0.01)
    for op in (ADAM_UPDATE, NESTEROV_UPDATE):
        kernel = cpu_fused.map_kernel(op, f, "flat")
        for args, compiled in kernel.overloads.items():
            if args[0].dtype != numba_float32:
                continue
            wide = {name: str(t) for name, t in compiled.type_annotation.typemap.items()
                    if not name.startswith("$") and "float64" in str(t)}
            assert not wide, f"{op.name} widens to float64: {wide}"


@needs_numba
def test_training_leaves_no_subnormal_moments(digits):
    """Pixels that go dark after the first epoch: their weights' first moments decay as 0.9^t
    and, without the flush, ~900 steps later hold subnormal numbers (288 of them here)."""
    x, y = digits
    x = x.astype(np.float32)
    net = dn.Network(64, [dn.Dense(16, "relu"), dn.Dense(10, "softmax")], dtype="float32", seed=0)
    opt = dn.Adam(1e-3)
    net.fit(x, y, epochs=1, batch_size=64, optimizer=opt, progress=False)
    dark = x.copy()
    dark[:, 20:40] = 0
    net.fit(dark, y, epochs=6, batch_size=8, optimizer=opt, progress=False)
    tiny = np.finfo(np.float32).tiny
    first_moment_w1 = opt.state[0][0]
    assert (first_moment_w1[:, 20:40] == 0).mean() > 0.5     # decayed all the way, to exactly 0
    for bufs in opt.state:
        for buf in bufs:
            assert not ((buf != 0) & (np.abs(buf) < tiny)).any()


# -- BLAS ------------------------------------------------------------------------------
def test_blas_choice_is_checked(monkeypatch):
    with pytest.raises(DensennError, match="blas"):
        CPUEngine(blas="atlas")
    monkeypatch.setenv("DENSENN_BLAS", "bogus")
    with pytest.raises(DensennError, match="DENSENN_BLAS"):
        CPUEngine()
    assert CPUEngine(blas="openblas").blas == "openblas"


@pytest.mark.skipif(HAS_MKL, reason="MKL is installed here: blas='mkl' works")
def test_asking_for_missing_mkl_says_what_to_install():
    with pytest.raises(DensennError, match=r"densenn\[mkl\]"):
        CPUEngine(blas="mkl")


@pytest.mark.skipif(not HAS_MKL, reason="MKL is not installed (pip install 'densenn[mkl]')")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mkl_and_openblas_gemms_agree_on_layer_shapes(dtype):
    mkl, ref = CPUEngine(blas="mkl"), CPUEngine(blas="openblas")
    assert mkl.blas == "mkl" and "Math Kernel Library" in mkl._mkl.version
    r = np.random.default_rng(1)
    x = r.normal(size=(40, 33)).astype(dtype)
    w = r.normal(size=(17, 33)).astype(dtype)
    for n in (40, 7):   # the whole batch and the first rows of it (a view)
        zs = [np.full((40, 17), np.nan, dtype) for _ in range(2)]
        for eng, z in zip((mkl, ref), zs):
            eng.gemm(1.0, x[:n], w, 0.0, z[:n], trans_b=True)
        np.testing.assert_allclose(zs[0][:n], zs[1][:n], rtol=1e-4 if dtype == np.float32 else 1e-12)
        assert np.isnan(zs[0][n:]).all()        # nothing written past the view
    dw = [np.zeros((17, 33), dtype) for _ in range(2)]
    d = r.normal(size=(40, 17)).astype(dtype)
    for eng, out in zip((mkl, ref), dw):
        eng.gemm(0.5, d, x, 2.0, out, trans_a=True)
    # an entry that is a sum of 40 terms of size ~1 cancelling to ~1e-5 carries the rounding
    # of those terms, not of itself: the bound is relative to the largest entry (on this
    # CPU MKL and OpenBLAS differ by 3e-12 relative on one such entry in float64)
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dw[0], dw[1], rtol=rtol, atol=rtol * np.abs(dw[1]).max())


@pytest.mark.parametrize("name", ["cpu", "cpu:numpy"])
def test_gemm_refuses_mismatched_shapes(name):
    e = get_engine(name)
    a, b = np.ones((4, 3), np.float32), np.ones((5, 2), np.float32)
    with pytest.raises(DensennError, match="gemm shapes"):
        e.gemm(1.0, a, b, 0.0, np.zeros((4, 2), np.float32))
    with pytest.raises(DensennError, match="gemm shapes"):
        e.gemm(1.0, a, np.ones((3, 2), np.float32), 0.0, np.zeros((4, 3), np.float32))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_openmp_updates_equal_the_one_thread_kernels(dtype):
    """Adam and momentum in blocks on Numba's OpenMP threads (large parameters, MKL on GNU
    OpenMP) give exactly what the one-thread kernels give."""
    if cpu_fused.omp_kernel(ADAM_UPDATE, dtype) is None:
        pytest.skip(f"Numba's threading layer is not OpenMP here (THREADING_LAYER="
                    f"{cpu_fused.numba.config.THREADING_LAYER!r})")
    r = np.random.default_rng(4)
    n = 100_003                                    # not a multiple of the thread count
    w0, g0 = r.normal(size=n).astype(dtype), r.normal(size=n).astype(dtype)
    tiny = np.finfo(dtype).tiny
    adam_coef = np.array([1e-3, 1e-8, 0.9, 0.999, 0.1, 0.001, 0.01, 1.0, tiny], dtype)
    momentum_coef = np.array([0.1, 0.9, 0.01, tiny], dtype)
    none = np.empty(0, dtype)
    results = []
    for kernel in (lambda op: cpu_fused.map_kernel(op, dtype, "flat"), lambda op: cpu_fused.omp_kernel(op, dtype)):
        w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
        w2, vel = w0.copy(), np.zeros_like(w0)
        for _ in range(3):
            kernel(ADAM_UPDATE)(w, g0, m, v, adam_coef, none)
            kernel(NESTEROV_UPDATE)(w2, g0, vel, momentum_coef, none)
        results.append((w, m, v, w2, vel))
    for got, expected in zip(*results):
        np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(results[1][0], w0)


@pytest.mark.parametrize("name", ["cpu", "cpu:numpy"])
@pytest.mark.parametrize("shape", [(4000, 7), (3, 5), (13,), (0, 4), 9])
def test_buffers_start_on_a_cache_line(name, shape):
    """empty, zeros and a converting to_engine give 64-byte-aligned, C-contiguous, writable arrays."""
    from densenn.backend.cpu import ALIGN

    e = get_engine(name)
    want = shape if isinstance(shape, tuple) else (shape,)
    for dtype in ("float32", "float64", e.index_dtype):
        for x in (e.empty(shape, dtype), e.zeros(shape, dtype)):
            assert x.shape == want and x.dtype == np.dtype(dtype)
            assert x.flags.c_contiguous and x.flags.writeable
            # an empty array has no first element to align (NumPy may move its pointer)
            assert x.size == 0 or x.__array_interface__["data"][0] % ALIGN == 0
        assert not e.zeros(shape, dtype).any()
    host = np.arange(np.prod(want), dtype=np.float64).reshape(want)
    conv = e.to_engine(host, np.float32)
    assert conv.size == 0 or conv.__array_interface__["data"][0] % ALIGN == 0
    np.testing.assert_array_equal(conv, host.astype(np.float32))


def test_to_engine_shares_a_correctly_typed_array_and_copies_the_rest():
    e = get_engine("cpu")
    x = np.ones((6, 4), np.float32)
    assert e.to_engine(x) is x and e.to_engine(x, "float32") is x
    strided = np.ones((6, 8), np.float32)[:, ::2]
    copied = e.to_engine(strided)
    assert copied is not strided and copied.flags.c_contiguous
    np.testing.assert_array_equal(copied, strided)
    assert e.to_engine(np.float32(2.5)).shape == (1,)


@pytest.mark.parametrize("shape", [(-1, 3), (2.5,), ("a", 2)])
def test_empty_refuses_a_bad_shape(shape):
    with pytest.raises(DensennError, match="shape"):
        get_engine("cpu").empty(shape, np.float32)
