"""Shared fixtures: the engines a test runs on.

``ENGINE_NAMES`` is the one list of engines the backend tests go over. An engine
that cannot run here (no PyOpenCL, no GPU, ...) is skipped with the
:class:`~densenn.errors.EngineUnavailable` message as the reason.
"""
from __future__ import annotations

import pytest

#: every engine the contract suite checks; "cpu:numpy" is the CPU engine without Numba or MKL
ENGINE_NAMES = ("cpu", "cpu:numpy", "opencl", "cuda")


def load_engine(name: str):
    """The engine ``name``, or a pytest skip saying why it is unavailable here."""
    from densenn.backend import get_engine
    from densenn.errors import EngineUnavailable

    try:
        engine = get_engine(name)
    except EngineUnavailable as exc:
        pytest.skip(f"engine {name!r} unavailable: {exc}")
    cpu = get_engine("cpu")
    if name == "cpu:numpy" and not cpu.fused and cpu.blas == "openblas":
        pytest.skip("'cpu' already runs the pure NumPy kernels and SciPy's BLAS here (no Numba, no MKL)")
    return engine


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def engine(request):
    """Each available engine in turn (shared for the session: kernels compile once)."""
    return load_engine(request.param)


@pytest.fixture(scope="session")
def available_engines():
    """{name: engine} of the engines that work here (device engines only once each)."""
    from densenn.backend import get_engine
    from densenn.errors import EngineUnavailable

    found = {}
    for name in ENGINE_NAMES:
        try:
            found[name] = get_engine(name)
        except EngineUnavailable:
            pass
    return found


@pytest.fixture
def one_blas_thread():
    """One BLAS thread (OpenBLAS or MKL) for the test: on a busy 2-core machine the BLAS's
    spinning threads made memory-measuring steps ~20× and an MNIST epoch several times
    slower (10.8 s against 1.5 s measured); on an idle one it costs ~30%."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
