"""CUDA graphs for the CUDA engine: a training step recorded once, replayed with one launch.

A small network's step is a few dozen tiny kernels; launching them one by one
from Python costs more than running them. A CUDA graph records the whole step
once (``stream.begin_capture()`` ... ``end_capture()``) and replays it with one
``cudaGraphLaunch``.

CuPy 14 refuses cuBLAS calls during stream capture ("calling cuBLAS API during
stream capture is currently unsupported"), so the GEMMs take another route:
:class:`CtypesCublas` is a cuBLAS handle of our own, created through ``ctypes``
on the very ``libcublas.so`` that CuPy has loaded, its stream set to the
capturing stream and its workspace to a preallocated device buffer (cuBLAS must
not allocate while a graph is recorded). Its ``cublasSgemm_v2``/``cublasDgemm_v2``
calls are recorded into the same graph as the engine's own kernels.

Usage (shapes fixed, buffers allocated, batch already on the device)::

    step = engine.capture(lambda: train_step())   # runs it once, then records it
    for _ in range(steps):
        step()                                     # one launch per step

What a graph freezes: the buffers (device addresses) and every scalar argument
(GEMM alpha/beta, learning rate, Adam's bias-corrected step size) as they were
while recording. So: keep every array ``fn`` touches alive and in place while
the graph is used; re-capture when a scalar changes (a learning-rate schedule,
Adam's per-step bias correction); gather the next batch (``take_rows``, which
uploads indices from the host) outside the graph. Host transfers are refused
while recording.

Everything here imports without CuPy or a GPU; the handle is made on first use.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import re
from typing import Any

import numpy as np

from densenn.config import setting
from densenn.errors import DensennError

_STATUS = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED",
           7: "CUBLAS_STATUS_INVALID_VALUE", 8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
           13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
           15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}

#: cuBLAS workspace for the graph handle, MiB (NVIDIA recommends 32 MiB on Hopper for graphs)
DEFAULT_WORKSPACE_MB = 32

_LIB: Any = None


def find_libcublas() -> str | None:
    """Path of the libcublas CuPy uses: the one mapped into this process, else where
    CuPy's library finder (cuda.pathfinder) or the system would load it from."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
        hits = sorted(set(re.findall(r"(/\S*/libcublas\.so[.\d]*)$", text, flags=re.M)))
        if hits:
            return hits[0]
    except OSError:
        pass
    try:
        from cuda import pathfinder

        loaded = pathfinder.load_nvidia_dynamic_lib("cublas")
        if getattr(loaded, "abs_path", None):
            return loaded.abs_path
    except Exception:
        pass
    return ctypes.util.find_library("cublas")


def load_libcublas():
    """The ctypes view of libcublas with the prototypes used here (loaded once)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    try:  # make CuPy load its cuBLAS first, so that we bind to the same copy
        importlib.import_module("cupy_backends.cuda.libs.cublas")
    except Exception:
        pass
    path = find_libcublas()
    if path is None:
        raise DensennError("CUDA graphs: cannot find libcublas.so (is CuPy's cuBLAS installed?)")
    lib = ctypes.CDLL(path)
    vp, i = ctypes.c_void_p, ctypes.c_int
    protos = {
        "cublasCreate_v2": [ctypes.POINTER(vp)],
        "cublasDestroy_v2": [vp],
        "cublasSetStream_v2": [vp, vp],
        "cublasSetMathMode": [vp, i],
        "cublasSetPointerMode_v2": [vp, i],
        "cublasSgemm_v2": [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i],
        "cublasDgemm_v2": [vp, i, i, i, i, i, vp, vp, i, vp, i, vp, vp, i],
    }
    for name, argtypes in protos.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = i
    try:  # cuBLAS >= 11.4
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
        lib.cublasSetWorkspace_v2.restype = i
    except AttributeError:
        pass
    lib._densenn_path = path  # type: ignore[attr-defined]
    _LIB = lib
    return lib


def _check(status: int, what: str):
    if status != 0:
        raise DensennError(f"{what} failed: {_STATUS.get(status, status)}")


class CtypesCublas:
    """A cuBLAS handle of our own, called through ctypes: usable while a graph is recorded.

    Its stream follows CuPy's current stream (set only when it changes); its
    workspace is a device buffer from CuPy's pool (``$DENSENN_CUBLAS_WORKSPACE_MB``,
    default 32 MiB), so cuBLAS never allocates during capture.
    """

    def __init__(self, engine, workspace_mb: float | None = None):
        import cupy

        self._cupy = cupy
        self.lib = load_libcublas()
        if workspace_mb is None:
            workspace_mb = setting("DENSENN_CUBLAS_WORKSPACE_MB")
        self.handle = ctypes.c_void_p()
        with cupy.cuda.Device(engine.device_id):
            _check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate_v2")
            _check(self.lib.cublasSetPointerMode_v2(self.handle, 0), "cublasSetPointerMode_v2")  # host scalars
            self.workspace = None
            size = int(workspace_mb * 2 ** 20)
            if size > 0 and hasattr(self.lib, "cublasSetWorkspace_v2"):
                self.workspace = cupy.empty(size, dtype=np.uint8)
                _check(self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, size),
                       "cublasSetWorkspace_v2")
        self._stream: Any = None
        self._gemm = {np.dtype(np.float32): self.lib.cublasSgemm_v2, np.dtype(np.float64): self.lib.cublasDgemm_v2}

    def set_math_mode(self, mode: int) -> None:
        _check(self.lib.cublasSetMathMode(self.handle, int(mode)), "cublasSetMathMode")

    def set_stream(self, ptr: int) -> None:
        if ptr != self._stream:
            _check(self.lib.cublasSetStream_v2(self.handle, ptr), "cublasSetStream_v2")
            self._stream = ptr

    def gemm(self, dtype, op_a, op_b, m, n, k, p_alpha, a, lda, b, ldb, p_beta, c, ldc) -> None:
        """Column-major ``c = α·op(a)·op(b) + β·c`` on CuPy's current stream (pointers as ints)."""
        self.set_stream(self._cupy.cuda.get_current_stream().ptr)
        status = self._gemm[dtype](self.handle, op_a, op_b, m, n, k, p_alpha, a, lda, b, ldb, p_beta, c, ldc)
        if status != 0:
            _check(status, "cublasSgemm_v2" if dtype == np.float32 else "cublasDgemm_v2")

    def close(self) -> None:
        if self.handle:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = ctypes.c_void_p()
        self.workspace = None


class GraphStep:
    """A recorded CUDA graph; calling it replays the whole recording with one launch
    on CuPy's current stream (ordered with the engine's other work)."""

    def __init__(self, engine, graph, captured_launches: int):
        self.engine = engine
        self.graph = graph
        #: kernels and cuBLAS calls inside the graph (each replay is one launch)
        self.captured_launches = captured_launches

    def __call__(self) -> None:
        if self.graph is None:
            raise DensennError("this CUDA graph was released")
        self.graph.launch()
        self.engine.launches += 1

    def release(self) -> None:
        self.graph = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return f"GraphStep({self.captured_launches} launches recorded)"


def capture(engine, fn, warmup: int = 1) -> GraphStep:
    """Run ``fn()`` ``warmup`` times, then record it into a CUDA graph (see the module docs)."""
    import cupy

    if engine._capturing:
        raise DensennError("capture: already recording a CUDA graph")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise DensennError(f"capture: warmup must be a non-negative integer, got {warmup!r}")
    engine._graph_blas_handle()
    if engine._capture_stream is None:
        engine._capture_stream = cupy.cuda.Stream(non_blocking=True)
    stream = engine._capture_stream
    engine.synchronize()        # a non-blocking stream does not wait for the default stream
    graph = None
    with stream:
        engine._capturing = True
        try:
            # warm-up: compiles kernels, loads cuBLAS's, grows scratch buffers, so that
            # recording neither compiles nor allocates
            for _ in range(warmup):
                fn()
            stream.synchronize()
            start = engine.launches
            stream.begin_capture()
            try:
                fn()
            except BaseException:
                try:
                    stream.end_capture()
                except Exception:
                    pass
                raise
            graph = stream.end_capture()
        finally:
            engine._capturing = False
    captured = engine.launches - start
    engine.launches = start     # recording ran nothing
    return GraphStep(engine, graph, captured)


__all__ = ["CtypesCublas", "GraphStep", "capture", "find_libcublas", "load_libcublas"]
