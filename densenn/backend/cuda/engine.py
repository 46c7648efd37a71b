"""The CUDA engine: CuPy arrays, cuBLAS GEMMs in place, fused kernels of our own.

Arrays are C-contiguous ``cupy.ndarray`` in the protocol's row-major ``(rows,
cols)`` layout, so ``arr[:n]`` is a contiguous view, as on the CPU.

* **GEMM.** cuBLAS is column-major like Fortran BLAS. The C-ordered ``(m, n)``
  array ``c`` is, read column-major, the ``(n, m)`` matrix ``cᵀ`` with leading
  dimension ``c.strides[0] / itemsize``, so ``c = α·op(a)·op(b) + β·c`` is
  computed as ``cᵀ = α·op(b)ᵀ·op(a)ᵀ + β·cᵀ``: operands swapped, no copy, any
  row stride (``[:n]`` views and column slices included). The engine uses a
  cuBLAS handle of its own (so its TF32 switch does not change ``cupy.matmul``).
* **Fused kernels.** Everything else is one kernel per protocol call, compiled
  from C source with NVRTC the first time it is used and cached per activation,
  cost and dtype (CuPy also caches the binaries on disk): bias + activation,
  derivative × signal, the whole SGD/Adam update of one parameter, the cost's
  gradient, ``a - y``. Softmax runs one warp per row. ``cost_value`` and
  ``count_correct`` add into a 1-element device array without a host sync.
  Arrays that are not C-contiguous go through CuPy ``ElementwiseKernel``\\ s built
  from the same C expressions.
* **Counters.** ``uploads``/``downloads`` count host↔device copies;
  ``launches`` counts the kernels, cuBLAS calls, memsets and device copies this
  engine queued (a cuBLAS call counts once, whatever it launches inside; a CUDA
  graph replay counts once).
* **TF32.** ``CUDAEngine(tf32=True)`` or ``$DENSENN_TF32=1`` lets cuBLAS run
  float32 GEMMs on the tensor cores with TF32 inputs (10-bit mantissa; relative
  error ~1e-3 instead of ~1e-6). Off by default. Only GEMMs are affected.
* **CUDA graphs.** ``engine.capture(fn)`` records ``fn`` (a whole training step
  of fixed shapes) into a CUDA graph and returns a callable that replays it with
  one launch; see :mod:`densenn.backend.cuda.graph`.
* **Memory.** Arrays come from CuPy's memory pool. ``release(x)`` cannot free
  an array that is still referenced: the owner drops its reference (the layers
  do, right after calling it) and the block goes back to the pool at once, for
  the next allocation; ``release_all()`` hands the pool's unused blocks back to
  the driver. ``pool_used_bytes()`` is what the pool has handed out.

Importing this module needs neither CuPy nor a GPU; ``create_engine`` (what
``get_engine("cuda")`` calls) raises :class:`EngineUnavailable` with the reason
when the engine cannot run here, and :func:`describe` says so without raising.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from densenn.backend.base import serialize
from densenn.backend.cuda import graph as cuda_graph
from densenn.backend.cuda.devices import _env_flag, cupy, describe, unavailable_reason
from densenn.backend.cuda.kernels import _CTYPES, BLOCK, DeclaredOps, SharedKernels, _module, sources
from densenn.errors import DensennError, EngineUnavailable
from densenn.kernels import gpu

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_FLOATS = (_F32, _F64)

_I = np.int64           # every size and offset crosses into the kernels as a 64-bit integer

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH = 0, 3   # cublasMath_t (cublas_api.h)


def create_engine(arg: str = "") -> CUDAEngine:
    """The engine for ``get_engine("cuda")`` (arg ``""``) or ``get_engine("cuda:N")`` (arg ``"N"``)."""
    arg = (arg or "").strip()
    if arg == "":
        device = 0
    elif arg.isdigit():
        device = int(arg)
    else:
        raise DensennError(f"engine 'cuda' takes 'cuda' or 'cuda:N' with N a device number, got 'cuda:{arg}'")
    return CUDAEngine(device=device, name="cuda" if arg == "" else f"cuda:{device}")


# =========================================================================================
# The engine
# =========================================================================================
def _rowmajor_ld(x, item: int):
    """Leading dimension (in elements) of a 2-D array read row-major, or None if its rows are not unit-stride."""
    r, s = x.shape
    s0, s1 = x.strides
    if s > 1 and s1 != item:
        return None
    if r <= 1:
        return max(s, 1)
    if s0 <= 0 or s0 % item or s0 < s * item:
        return None
    return s0 // item


class CUDAEngine(DeclaredOps, SharedKernels):
    """CuPy arrays on one CUDA device; cuBLAS for GEMMs; fused kernels for the rest.

    ``device``: the CUDA device number. ``tf32`` (default ``$DENSENN_TF32``, off):
    float32 GEMMs on TF32 tensor cores. ``graph_gemm``: route every GEMM through the
    cuBLAS handle that CUDA graph capture uses (see :mod:`densenn.backend.cuda.graph`),
    so that eager runs and graph replays give bitwise the same numbers; off by
    default (the eager path then uses CuPy's cuBLAS bindings, a little less
    overhead per call).
    """

    def __init__(self, device: int = 0, tf32: bool | None = None, graph_gemm: bool = False, name: str | None = None):
        reason = unavailable_reason(device)
        if reason is not None:
            raise EngineUnavailable(reason)
        from cupy_backends.cuda.libs import cublas

        self.name = name or ("cuda" if device == 0 else f"cuda:{device}")
        self.device_id = int(device)
        self._device = cupy.cuda.Device(self.device_id)
        self._cublas = cublas
        self._ndarray = cupy.ndarray
        self.uploads = 0      # host -> device copies
        self.downloads = 0    # device -> host copies
        self.launches = 0     # kernels, cuBLAS calls, memsets, device copies queued
        with self._device:
            self._sms = int(cupy.cuda.runtime.getDeviceProperties(self.device_id)["multiProcessorCount"])
            self._handle = cublas.create()
        self._max_blocks = 32 * self._sms
        self._gemm_fn = {_F32: cublas.sgemm, _F64: cublas.dgemm}
        # alpha and beta live in host memory (CUBLAS_POINTER_MODE_HOST: read during the call)
        self._ab = {dt: np.zeros(2, dt) for dt in _FLOATS}
        self._ab_ptr = {dt: (self._ab[dt].ctypes.data, self._ab[dt].ctypes.data + dt.itemsize) for dt in _FLOATS}
        self._fns: dict = {}          # (program text, kernel name) -> RawKernel
        self._scratch: dict = {}      # (purpose, dtype) -> device buffer, grown on demand
        self._ones: dict = {}
        self._idx_dev: Any = None     # device int64 buffer for take_rows
        self._idx_host: Any = None    # the indices it holds (host copy), to upload once per batch
        self._graph_blas: Any = None  # cuda_graph.CtypesCublas, created on first use
        self._capture_stream = None
        self._capturing = False       # while a CUDA graph is being recorded
        self.graph_gemm = bool(graph_gemm)
        self._tf32 = False
        self.set_tf32(_env_flag("DENSENN_TF32") if tf32 is None else bool(tf32))
        # one operation at a time: networks may share the engine across threads (a CUDA graph
        # capture, though, records whatever is launched meanwhile: capture from one thread);
        # with several GPUs, each with this engine's device current (CuPy launches on the
        # current device; with one GPU there is nothing to switch)
        serialize(self, extra=("set_tf32", "release_all", "pool_used_bytes", "pool_total_bytes", "ones",
                               "close", "capture"),
                  context=self._device if cupy.cuda.runtime.getDeviceCount() > 1 else None)

    def __repr__(self):
        return f"CUDAEngine(device={self.device_id}, tf32={self._tf32}, graph_gemm={self.graph_gemm})"

    # -- settings ------------------------------------------------------------------------
    @property
    def tf32(self) -> bool:
        return self._tf32

    def set_tf32(self, on: bool) -> None:
        """Let cuBLAS use TF32 tensor cores for float32 GEMMs (on), or not (off: full float32)."""
        mode = CUBLAS_TF32_TENSOR_OP_MATH if on else CUBLAS_DEFAULT_MATH
        self._cublas.setMathMode(self._handle, mode)
        if self._graph_blas is not None:
            self._graph_blas.set_math_mode(mode)
        self._tf32 = bool(on)

    # -- checks ----------------------------------------------------------------------------
    def _check(self, *arrays):
        nd = self._ndarray
        for x in arrays:
            if not isinstance(x, nd):
                kind = "a NumPy array" if isinstance(x, np.ndarray) else f"a {type(x).__name__}"
                raise DensennError(f"engine {self.name!r} got {kind} where it needs a CuPy array on its device "
                                   f"(move data with engine.to_engine or engine.upload)")

    def _no_capture(self, what: str):
        if self._capturing:
            raise DensennError(f"{what} copies between host and device and cannot be recorded into a CUDA "
                               f"graph; do it before replaying the graph")

    # -- memory ------------------------------------------------------------------------------
    def supports(self, dtype) -> bool:
        try:
            return np.dtype(dtype) in _FLOATS
        except TypeError:
            return False

    def empty(self, shape, dtype):
        return cupy.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return cupy.zeros(shape, dtype=dtype)

    def to_engine(self, host, dtype=None):
        self._no_capture("to_engine")
        if isinstance(host, self._ndarray):
            if host.device.id == self.device_id:
                return cupy.ascontiguousarray(host, dtype=dtype)
            out = cupy.empty(host.shape, dtype=dtype or host.dtype)
            cupy.copyto(out, host)   # peer copy
            return out
        h = np.ascontiguousarray(host, dtype=dtype)
        return self._h2d(cupy.empty(h.shape, dtype=h.dtype), h)

    def _h2d(self, out, host):
        """Copy the C-contiguous host array into the contiguous device array ``out`` (counted)."""
        out.set(host)
        self.uploads += 1
        return out

    def upload(self, host, out):
        self._check(out)
        self._no_capture("upload")
        h = np.ascontiguousarray(host, dtype=out.dtype)
        if h.shape != out.shape:
            if h.size != out.size:
                raise DensennError(f"upload: host array of shape {h.shape} does not fit device array of shape "
                                   f"{out.shape}")
            h = h.reshape(out.shape)
        if not out._c_contiguous:
            raise DensennError("upload: the device array must be C-contiguous")
        return self._h2d(out, h)

    def to_host(self, x):
        self._check(x)
        self._no_capture("to_host")
        self.downloads += 1
        return x.get()   # synchronises with the current stream

    def owns(self, x) -> bool:
        return cupy is not None and isinstance(x, self._ndarray) and x.device.id == self.device_id

    def nbytes(self, x) -> int:
        return int(x.nbytes)

    def release(self, x) -> None:
        """Nothing to do here: the memory of ``x`` goes back to CuPy's pool as soon as its
        owner drops the last reference (owners do, right after this call), and
        :meth:`release_all` returns the pool's unused blocks to the driver."""
        return None

    def release_all(self) -> int:
        """Hand the memory pool's unused blocks back to the driver; returns the bytes still in use."""
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
        return self.pool_used_bytes()

    def pool_used_bytes(self) -> int:
        """Bytes of device memory CuPy's pool has handed out on this device (arrays alive now)."""
        return int(cupy.get_default_memory_pool().used_bytes())

    def pool_total_bytes(self) -> int:
        """Bytes CuPy's pool holds from the driver on this device (in use + cached for reuse)."""
        return int(cupy.get_default_memory_pool().total_bytes())

    def synchronize(self) -> None:
        self._no_capture("synchronize")
        self._device.synchronize()

    def close(self) -> None:
        """Destroy this engine's cuBLAS handles and drop its scratch buffers (the engine is unusable after)."""
        if getattr(self, "_graph_blas", None) is not None:
            self._graph_blas.close()
            self._graph_blas = None
        if getattr(self, "_handle", None):
            with self._device:
                self._cublas.destroy(self._handle)
            self._handle = 0
        self._scratch.clear()
        self._ones.clear()
        self._idx_dev = self._idx_host = None

    def _buffer(self, purpose: str, dtype, size: int):
        """A device scratch vector of at least ``size`` elements, kept and grown as needed."""
        key = (purpose, dtype)
        buf = self._scratch.get(key)
        if buf is None or buf.size < size:
            buf = self._scratch[key] = cupy.empty(max(size, 1), dtype=dtype)
        return buf

    # -- kernels -------------------------------------------------------------------------------
    def _fn(self, source: str, name: str):
        key = (source, name)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = _module(source).get_function(name)
        return fn

    def _launch(self, fn, n: int, args):
        """One grid-stride kernel over n items."""
        fn((max(1, min((n + BLOCK - 1) // BLOCK, self._max_blocks)),), (BLOCK,), tuple(args))
        self.launches += 1

    @staticmethod
    def _ctype(dt) -> str:
        return "float" if dt == _F32 else "double"

    def _matrix(self, name, x, dt=None):
        """(rows, cols, leading dimension) of a 2-D array whose rows are unit-stride."""
        if x.ndim != 2:
            raise DensennError(f"{name} must be a 2-D array (rows, cols), got shape {x.shape}")
        if dt is not None and x.dtype != dt:
            raise DensennError(f"{name} must be {dt}, got {x.dtype}")
        ld = _rowmajor_ld(x, x.dtype.itemsize)
        if ld is None:
            raise DensennError(f"{name} must have unit-stride rows (C order), got strides {x.strides}")
        return x.shape[0], x.shape[1], ld

    # -- BLAS-like -------------------------------------------------------------------------------
    def gemm(self, alpha, a, b, beta, c, trans_a=False, trans_b=False):
        self._check(a, b, c)
        dt = c.dtype
        if dt not in _FLOATS or a.dtype != dt or b.dtype != dt:
            raise DensennError(f"gemm needs a, b and c of one dtype, float32 or float64; got {a.dtype}, "
                               f"{b.dtype}, {dt}")
        if a.ndim != 2 or b.ndim != 2 or c.ndim != 2:
            raise DensennError(f"gemm needs 2-D arrays, got shapes {a.shape}, {b.shape}, {c.shape}")
        m, n = c.shape
        ma, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        kb, nb = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if ma != m or nb != n or kb != k:
            raise DensennError(f"gemm shapes do not match: op(a) is {ma}×{k}, op(b) is {kb}×{nb}, c is {m}×{n}")
        if m == 0 or n == 0:
            return c
        if k == 0:
            return self.fill(c, 0.0) if beta == 0 else self.scal(beta, c)
        item = dt.itemsize
        ldc = _rowmajor_ld(c, item)
        if ldc is None:
            if _rowmajor_ld(c.T, item) is None:
                raise DensennError(f"gemm: c must have unit stride along rows or columns, got strides {c.strides}")
            # c column-major: cᵀ = op(b)ᵀ·op(a)ᵀ is a row-major product
            self.gemm(alpha, b, a, beta, c.T, trans_a=not trans_b, trans_b=not trans_a)
            return c
        # cuBLAS (column-major) sees each row-major array as its transpose: compute
        # cᵀ (n×m) = op(b)ᵀ (n×k) · op(a)ᵀ (k×m), with b in cuBLAS's "A" slot.
        lda = _rowmajor_ld(a, item)
        if lda is not None:
            op_a = CUBLAS_OP_T if trans_a else CUBLAS_OP_N
        else:
            lda = _rowmajor_ld(a.T, item)
            if lda is None:
                raise DensennError(f"gemm: a must have unit stride along rows or columns, got strides {a.strides}")
            op_a = CUBLAS_OP_N if trans_a else CUBLAS_OP_T
        ldb = _rowmajor_ld(b, item)
        if ldb is not None:
            op_b = CUBLAS_OP_T if trans_b else CUBLAS_OP_N
        else:
            ldb = _rowmajor_ld(b.T, item)
            if ldb is None:
                raise DensennError(f"gemm: b must have unit stride along rows or columns, got strides {b.strides}")
            op_b = CUBLAS_OP_N if trans_b else CUBLAS_OP_T
        ab = self._ab[dt]
        ab[0] = alpha
        ab[1] = beta
        p_alpha, p_beta = self._ab_ptr[dt]
        if self.graph_gemm or self._capturing:
            self._graph_blas_handle().gemm(dt, op_b, op_a, n, m, k, p_alpha, b.data.ptr, ldb,
                                           a.data.ptr, lda, p_beta, c.data.ptr, ldc)
        else:
            self._gemm_fn[dt](self._handle, op_b, op_a, n, m, k, p_alpha, b.data.ptr, ldb,
                              a.data.ptr, lda, p_beta, c.data.ptr, ldc)
        self.launches += 1
        return c

    def copy(self, x, y):
        self._check(x, y)
        if x.shape != y.shape:
            raise DensennError(f"copy: shapes differ, {x.shape} and {y.shape}")
        if x.dtype == y.dtype and x._c_contiguous and y._c_contiguous:
            if x.size:
                y.data.copy_from_device_async(x.data, x.nbytes)
                self.launches += 1
            return y
        cupy.copyto(y, x, casting="unsafe")
        self.launches += 1
        return y

    def fill(self, x, value):
        self._check(x)
        x.fill(value)
        self.launches += 1
        return x

    def take_rows(self, src, idx, out):
        """out = src[idx] (rows; indices clipped into range like ``numpy.take(mode="clip")``).

        ``idx``: an integer device array (what the training loop uploads once per batch;
        then the gather can also be recorded into a CUDA graph), or a host integer array,
        uploaded into the engine's own index buffer, only when it differs from the last.
        """
        self._check(src, out)
        if isinstance(idx, self._ndarray):
            if idx.ndim != 1 or idx.dtype.kind not in "iu" or not idx._c_contiguous:
                raise DensennError(f"take_rows: idx must be a contiguous 1-D integer array, got {idx.dtype} "
                                   f"{idx.shape}")
            dev_idx = idx
        else:
            self._no_capture("take_rows with host indices")
            idx = np.asarray(idx)
            if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
                raise DensennError(f"take_rows: idx must be a 1-D array of integers, got {idx.dtype} {idx.shape}")
            dev_idx = None
        n = idx.shape[0]
        if src.ndim not in (1, 2) or out.shape != (n,) + src.shape[1:] or out.dtype != src.dtype:
            raise DensennError(f"take_rows: out must have shape {(n,) + tuple(src.shape[1:])} and dtype {src.dtype}, "
                               f"got {out.shape} {out.dtype}")
        if not (src._c_contiguous and out._c_contiguous):
            raise DensennError("take_rows needs C-contiguous src and out")
        ct = _CTYPES.get(src.dtype.char)
        if ct is None:
            raise DensennError(f"take_rows: unsupported dtype {src.dtype}")
        if n == 0 or out.size == 0:
            return out
        if src.shape[0] == 0:
            raise DensennError("take_rows: src has no rows")
        if dev_idx is None:
            # host indices: one upload per batch (x, y and labels share them)
            if self._idx_host is None or self._idx_host.shape[0] != n or not np.array_equal(self._idx_host, idx):
                if self._idx_dev is None or self._idx_dev.shape[0] < n:
                    self._idx_dev = cupy.empty(max(n, 1), dtype=np.int64)
                host = np.ascontiguousarray(idx, dtype=np.int64)
                self._h2d(self._idx_dev[:n], host)
                self._idx_host = host.copy()
            dev_idx = self._idx_dev[:n]
        m = out.size // n
        source = gpu.program("cuda", "float", take=(ct, _CTYPES[dev_idx.dtype.char]))
        self._launch(self._fn(source, "take_rows"), out.size,
                     (src, _I(0), _I(src.shape[0]), dev_idx, _I(0), out, _I(0), _I(m), _I(out.size)))
        return out

    def ones(self, n: int, dtype):
        """A device vector of n ones (kept, grown to the largest n asked for)."""
        dt = np.dtype(dtype)
        if dt not in self._ones or self._ones[dt].shape[0] < n:
            self._ones[dt] = cupy.ones(max(n, 1), dtype=dt)
        return self._ones[dt][:n]

    # -- CUDA graphs ------------------------------------------------------------------------------------
    def _graph_blas_handle(self):
        if self._graph_blas is None:
            self._graph_blas = cuda_graph.CtypesCublas(self)
            self._graph_blas.set_math_mode(CUBLAS_TF32_TENSOR_OP_MATH if self._tf32 else CUBLAS_DEFAULT_MATH)
        return self._graph_blas

    def capture(self, fn, warmup: int = 1):
        """Record ``fn()`` (engine calls on fixed buffers) into a CUDA graph; returns a
        :class:`~densenn.backend.cuda.graph.GraphStep` whose call replays it with one launch.

        ``fn`` runs ``warmup`` times eagerly first (those runs take effect: a training
        step is trained), then once more while recording (which runs nothing). Scalars
        (learning rate, Adam's step size) are frozen at their recorded values; host
        transfers (take_rows, upload, to_host) are refused while recording.
        """
        return cuda_graph.capture(self, fn, warmup=warmup)


__all__ = ["CUDAEngine", "create_engine", "describe", "unavailable_reason", "sources"]
