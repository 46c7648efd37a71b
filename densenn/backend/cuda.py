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
  one launch; see :mod:`densenn.backend.cuda_graph`.
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

import importlib
import os

import numpy as np

from densenn.backend.base import serialize
from densenn.errors import DensennError, EngineUnavailable

try:
    import cupy
except Exception as _exc:  # ImportError, or a CuPy build that cannot load its runtime
    cupy = None
    _CUPY_ERROR: Exception | None = _exc
else:
    _CUPY_ERROR = None

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_FLOATS = (_F32, _F64)

#: NumPy dtype char -> C type, for the kernels that move any dtype (take_rows, labels)
_CTYPES = {"f": "float", "d": "double", "b": "signed char", "B": "unsigned char", "h": "short",
           "H": "unsigned short", "i": "int", "I": "unsigned int", "l": "long long",
           "q": "long long", "L": "unsigned long long", "Q": "unsigned long long", "?": "bool"}

BLOCK = 256             # threads per block of the elementwise and reduction kernels
WARP = 32
ROWS_PER_BLOCK = BLOCK // WARP   # softmax: one warp per row
_I32_LIMIT = 2 ** 31    # below this, kernels index with 32-bit unsigned ints

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH = 0, 3   # cublasMath_t (cublas_api.h)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# =========================================================================================
# Kernel sources
# =========================================================================================
_NEG_INF = {"float": "__int_as_float(0xff800000)", "double": "__longlong_as_double(0xfff0000000000000ULL)"}

#: typedefs for one compiled module: T the element type, I the index type
_PRELUDE = """\
typedef {T} T;
typedef {I} I;
#ifndef WARP
#define WARP 32
#endif
"""

#: warp and block reductions (written in terms of WARP and blockDim so that a CPU
#: emulation with WARP=1 and one thread per block runs the same code)
_REDUCE = r"""
template <typename S>
__device__ __forceinline__ S warp_sum(S v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename S>
__device__ __forceinline__ S warp_max(S v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* The sum of v over the block, valid in thread 0. blockDim.x: a multiple of WARP, <= 1024. */
template <typename S>
__device__ S block_sum(S v) {
    __shared__ S part[1024 / WARP];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = (lane < (int)(blockDim.x / WARP)) ? part[lane] : (S)0;
        v = warp_sum(v);
    }
    return v;
}
"""

#: row kernels: softmax (one warp per row), column sums, and the last step of reductions
_ROWS = r"""
#define NEG_INF {neg_inf}

/* Row-wise softmax, one warp per row. with_bias: z += b first (written back), then a = softmax(z);
   else a = softmax(z), z kept. a may be z. */
extern "C" __global__ void softmax_fwd(T* z, const T* b, T* a, const I n_rows, const I m,
                                       const I ldz, const I lda, const int with_bias) {
    const I row = (I)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const I lane = threadIdx.x % WARP;
    if (row >= n_rows) return;   /* the whole warp leaves together: one row per warp */
    T* zr = z + row * ldz;
    T* ar = a + row * lda;
    T top = NEG_INF;
    for (I j = lane; j < m; j += WARP) {
        T v = zr[j];
        if (with_bias) { v += b[j]; zr[j] = v; }
        ar[j] = v;
        top = fmax(top, v);
    }
    top = warp_max(top);
    T total = 0;
    for (I j = lane; j < m; j += WARP) {
        const T e = exp(ar[j] - top);   /* shifted by the row max: no overflow */
        ar[j] = e;
        total += e;
    }
    total = warp_sum(total);
    for (I j = lane; j < m; j += WARP) ar[j] = ar[j] / total;
}

/* z = s(1 - s), s = softmax(z) per row: the diagonal of the Jacobian, as 1/4 - (s - 1/2)^2. */
extern "C" __global__ void softmax_prime(T* z, const I n_rows, const I m, const I ldz) {
    const I row = (I)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const I lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    T* zr = z + row * ldz;
    T top = NEG_INF;
    for (I j = lane; j < m; j += WARP) top = fmax(top, zr[j]);
    top = warp_max(top);
    T total = 0;
    for (I j = lane; j < m; j += WARP) {
        const T e = exp(zr[j] - top);
        zr[j] = e;
        total += e;
    }
    total = warp_sum(total);
    for (I j = lane; j < m; j += WARP) {
        const T d = zr[j] / total - (T)0.5;
        zr[j] = (T)0.25 - d * d;
    }
}

/* z = s * (g - sum_j s_j g_j), s = softmax(z) per row, g the incoming signal (kept). */
extern "C" __global__ void softmax_delta(T* z, const T* g, const I n_rows, const I m,
                                         const I ldz, const I ldg) {
    const I row = (I)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const I lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    T* zr = z + row * ldz;
    const T* gr = g + row * ldg;
    T top = NEG_INF;
    for (I j = lane; j < m; j += WARP) top = fmax(top, zr[j]);
    top = warp_max(top);
    T total = 0;
    for (I j = lane; j < m; j += WARP) {
        const T e = exp(zr[j] - top);
        zr[j] = e;
        total += e;
    }
    total = warp_sum(total);
    T dot = 0;
    for (I j = lane; j < m; j += WARP) {
        const T s = zr[j] / total;
        zr[j] = s;
        dot += s * gr[j];
    }
    dot = warp_sum(dot);
    for (I j = lane; j < m; j += WARP) zr[j] = zr[j] * (gr[j] - dot);
}

/* out[g * m + j] = sum of x[i, j] over the rows i of chunk g = blockIdx.y.
   Block (<= 32, <= 32) threads: x over columns (coalesced), y over rows. */
extern "C" __global__ void sum_rows(const T* x, T* out, const I n_rows, const I m, const I ldx,
                                    const I chunk) {
    __shared__ T tile[32][33];
    const I j = (I)blockIdx.x * blockDim.x + threadIdx.x;
    const I start = (I)blockIdx.y * chunk;
    const I stop = (n_rows - start < chunk) ? n_rows : start + chunk;
    T s = 0;
    if (j < m)
        for (I i = start + threadIdx.y; i < stop; i += blockDim.y) s += x[i * ldx + j];
    tile[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < m) {
        T t = 0;
        for (unsigned int k = 0; k < blockDim.y; ++k) t += tile[k][threadIdx.x];
        out[(I)blockIdx.y * m + j] = t;
    }
}

/* out[j] = sum over g < n_chunks of part[g * m + j]: the second pass of sum_rows. */
extern "C" __global__ void sum_chunks(const T* part, T* out, const I n_chunks, const I m) {
    const I j = (I)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    T s = 0;
    for (I g = 0; g < n_chunks; ++g) s += part[g * m + j];
    out[j] = s;
}

/* acc[0] += sum of part[0:count]: the second pass of cost_value and count_correct. One block. */
extern "C" __global__ void finish_sum(const T* part, const I count, T* acc) {
    T s = 0;
    for (I k = threadIdx.x; k < count; k += blockDim.x) s += part[k];
    s = block_sum(s);
    if (threadIdx.x == 0) acc[0] += s;
}
"""

#: sum of the per-element loss of one cost into acc[0] (one block) or part[blockIdx.x]
_COST_VALUE = r"""
extern "C" __global__ void cost_value(const T* pa, const T* py, T* acc, T* part, const I n_rows,
                                      const I m, const I lda, const I ldy, const T eps) {
    T s = 0;
    const I total = n_rows * m;
    for (I k = (I)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (I)blockDim.x * gridDim.x) {
        const I r = k / m, c = k - r * m;
        const T a = pa[r * lda + c];
        const T y = py[r * ldy + c];
        s += (LOSS);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) {
        if (gridDim.x == 1) acc[0] += s;
        else part[blockIdx.x] = s;
    }
}
"""

#: rows whose prediction (argmax, first maximum as in NumPy; a > 0.5 for one output) equals the label
_COUNT_CORRECT = r"""
typedef {L} L;
extern "C" __global__ void count_correct(const T* pa, const L* labels, T* acc, T* part,
                                         const I n_rows, const I m, const I lda) {
    int hits = 0;
    for (I r = (I)blockIdx.x * blockDim.x + threadIdx.x; r < n_rows; r += (I)blockDim.x * gridDim.x) {
        const T* ar = pa + r * lda;
        long long pred = 0;
        if (m == 1) {
            pred = ar[0] > (T)0.5 ? 1 : 0;
        } else {
            T best = ar[0];
            bool nan = best != best;          /* NumPy's argmax stops at the first NaN */
            for (I j = 1; j < m && !nan; ++j) {
                const T v = ar[j];
                if (v != v) { pred = (long long)j; nan = true; }
                else if (v > best) { best = v; pred = (long long)j; }
            }
        }
        hits += (pred == (long long)labels[r]) ? 1 : 0;
    }
    hits = block_sum(hits);
    if (threadIdx.x == 0) {
        if (gridDim.x == 1) acc[0] += (T)hits;
        else part[blockIdx.x] = (T)hits;
    }
}
"""

#: out = src[idx] (rows), indices clipped into range like numpy.take(mode="clip")
_TAKE_ROWS = r"""
typedef {IX} IX;
extern "C" __global__ void take_rows(const T* src, const IX* idx, T* out, const I total,
                                     const I m, const long long n_src) {
    for (I k = (I)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (I)blockDim.x * gridDim.x) {
        const I r = k / m, c = k - r * m;
        long long s = (long long)idx[r];
        s = s < 0 ? 0 : (s >= n_src ? n_src - 1 : s);
        out[k] = src[s * (long long)m + c];
    }
}
"""


class _Ew:
    """One elementwise operation, written once as a C statement over named elements.

    ``ins`` are read, ``outs`` read and written (C references), ``scalars`` are of
    type T; ``bias`` adds a 1-D array ``b`` indexed by the column ``col``. Compiled
    into a grid-stride RawKernel over C-contiguous arrays (``source``), or, for
    other strides, into a CuPy ElementwiseKernel (``elementwise``).
    """

    def __init__(self, name, ins=(), outs=(), scalars=(), body="", bias=False):
        self.name, self.ins, self.outs, self.scalars = name, tuple(ins), tuple(outs), tuple(scalars)
        self.body, self.bias = body, bias

    def source(self) -> str:
        params = ["const I n"] + [f"const T* p_{x}" for x in self.ins] + [f"T* p_{x}" for x in self.outs]
        if self.bias:
            params += ["const T* b", "const I ncol"]
        params += [f"const T {s}" for s in self.scalars]
        lines = [f"        const T {x} = p_{x}[i];" for x in self.ins]
        lines += [f"        T& {x} = p_{x}[i];" for x in self.outs]
        if self.bias:
            lines.append("        const I col = i % ncol;")
        loads = "\n".join(lines)
        return (f'extern "C" __global__ void {self.name}({", ".join(params)}) {{\n'
                "    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n;"
                " i += (I)blockDim.x * gridDim.x) {\n"
                f"{loads}\n        {self.body}\n    }}\n}}\n")

    def elementwise(self):
        ins = [f"T {x}" for x in self.ins] + (["raw T b", "int64 ncol"] if self.bias else [])
        ins += [f"T {s}" for s in self.scalars]
        body = ("const ptrdiff_t col = i % ncol; " if self.bias else "") + self.body
        return cupy.ElementwiseKernel(", ".join(ins), ", ".join(f"T {x}" for x in self.outs), body,
                                      f"densenn_{self.name}")


class _Group:
    """Kernels compiled together into one module per (element type, index type)."""

    def __init__(self, key, ops=(), extra=""):
        self.key = key
        self.ops = {op.name: op for op in ops}
        self.extra = extra

    def source(self, ctype: str, itype: str) -> str:
        extra = self.extra.replace("{neg_inf}", _NEG_INF.get(ctype, "0"))
        return (_PRELUDE.format(T=ctype, I=itype) + _REDUCE + extra
                + "".join(op.source() for op in self.ops.values()))


#: elementwise operations that do not depend on an activation or a cost, plus the row kernels
BASE = _Group("base", [
    _Ew("add_bias", outs=("z",), bias=True, body="z += b[col];"),
    _Ew("axpy", ins=("x",), outs=("y",), scalars=("alpha",), body="y += alpha * x;"),
    _Ew("scal", outs=("x",), scalars=("alpha",), body="x *= alpha;"),
    _Ew("copy", ins=("x",), outs=("y",), body="y = x;"),
    _Ew("diff", ins=("a", "y"), outs=("out",), scalars=("scale",), body="out = scale * (a - y);"),
    _Ew("sgd", ins=("g",), outs=("w",), scalars=("lr", "wd"), body="w -= lr * (g + wd * w);"),
    _Ew("sgd_momentum", ins=("g",), outs=("w", "v"), scalars=("lr", "mu", "wd"),
        body="const T gi = g + wd * w; const T vi = mu * v - lr * gi; v = vi; w += vi;"),
    _Ew("sgd_nesterov", ins=("g",), outs=("w", "v"), scalars=("lr", "mu", "wd"),
        body="const T gi = g + wd * w; const T vi = mu * v - lr * gi; v = vi; w += mu * vi - lr * gi;"),
    _Ew("adam", ins=("g",), outs=("w", "m", "v"), scalars=("step", "eps", "beta1", "beta2", "wd", "keep"),
        body="const T gi = g + wd * w; "
             "const T mi = beta1 * m + ((T)1 - beta1) * gi; "
             "const T vi = beta2 * v + ((T)1 - beta2) * gi * gi; "
             "m = mi; v = vi; "
             "w = keep * w - step * mi / (sqrt(vi) + eps);"),
], extra=_ROWS)


def activation_group(act) -> _Group:
    """The fused kernels of an elementwise activation (from its ``c_activ``/``c_prime``)."""
    f, fp = act.c_activ, act.c_prime
    if not (f and fp):
        raise DensennError(f"activation {act.name!r} has no C expressions (c_activ, c_prime) for the CUDA engine")
    return _Group(("act", f, fp), [
        _Ew("bias_activ", outs=("z", "a"), bias=True, scalars=("p",), body=f"z += b[col]; a = ({f});"),
        _Ew("activ", ins=("z",), outs=("a",), scalars=("p",), body=f"a = ({f});"),
        _Ew("prime", outs=("z",), scalars=("p",), body=f"z = ({fp});"),
        _Ew("delta", ins=("a",), outs=("z",), scalars=("p",), body=f"z = ({fp}) * a;"),
    ])


def cost_group(cost) -> _Group:
    """The kernels of a cost (from its ``c_loss``/``c_grad``): value (a reduction) and gradient."""
    loss, grad = cost.c_loss, cost.c_grad
    if not (loss and grad):
        raise DensennError(f"cost {cost.name!r} has no C expressions (c_loss, c_grad) for the CUDA engine")
    return _Group(("cost", loss, grad), [
        _Ew("cost_grad", ins=("a", "y"), outs=("out",), scalars=("eps", "scale"), body=f"out = scale * ({grad});"),
        # out is a: the same statement with a read and written through one reference
        _Ew("cost_grad_inplace", ins=("y",), outs=("a",), scalars=("eps", "scale"), body=f"a = scale * ({grad});"),
    ], extra=_COST_VALUE.replace("LOSS", loss))


def count_group(label_ctype: str) -> _Group:
    return _Group(("count", label_ctype), extra=_COUNT_CORRECT.replace("{L}", label_ctype))


def take_group(index_ctype: str) -> _Group:
    return _Group(("take", index_ctype), extra=_TAKE_ROWS.replace("{IX}", index_ctype))

_MODULES: dict = {}   # (group key, T, I) -> cupy.RawModule (compiled on first use, once per process)


def _module(group: _Group, ctype: str, itype: str):
    key = (group.key, ctype, itype)
    mod = _MODULES.get(key)
    if mod is None:
        mod = _MODULES[key] = cupy.RawModule(code=group.source(ctype, itype))
    return mod


# =========================================================================================
# Availability
# =========================================================================================
def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def unavailable_reason(device: int = 0) -> str | None:
    """None when the CUDA engine can run on ``device`` here, else why not (never raises)."""
    try:
        if cupy is None:
            return f"engine 'cuda' needs CuPy ({_CUPY_ERROR}): pip install 'densenn[cuda]'"
        try:
            ok = cupy.cuda.is_available()
        except Exception as exc:
            return f"no CUDA device: {type(exc).__name__}: {exc}"
        if not ok:
            return "no CUDA device: cupy.cuda.is_available() is False"
        count = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= device < count:
            return f"no CUDA device {device}: this machine has {count} (cuda:0 to cuda:{count - 1})"
        try:
            importlib.import_module("cupy_backends.cuda.libs.cublas")   # loads libcublas
        except Exception as exc:
            return (f"CuPy cannot load cuBLAS ({exc}); install the CUDA libraries: "
                    "pip install 'cupy-cuda12x[ctk]' (or the toolkit)")
        try:
            cupy.cuda.nvrtc.getVersion()
        except Exception as exc:
            return (f"CuPy cannot load NVRTC, which compiles the kernels ({exc}); "
                    "pip install 'cupy-cuda12x[ctk]' (or the toolkit)")
        return None
    except Exception as exc:  # a broken driver must not break `densenn info`
        return f"CUDA check failed: {type(exc).__name__}: {exc}"


def describe() -> dict:
    """What ``densenn info`` shows for CUDA: whether it works, and on what. Never raises."""
    info: dict = {"engine": "cuda", "available": False, "reason": None, "cupy": None,
                  "cuda_runtime": None, "cuda_driver": None, "nvrtc": None,
                  "tf32_default": _env_flag("DENSENN_TF32"), "devices": []}
    try:
        if cupy is None:
            info["reason"] = unavailable_reason()
            return info
        info["cupy"] = cupy.__version__
        for key, get in (("cuda_runtime", lambda: cupy.cuda.runtime.runtimeGetVersion()),
                         ("cuda_driver", lambda: cupy.cuda.runtime.driverGetVersion())):
            try:
                version = int(get())
                info[key] = _cuda_version(version) if version > 0 else None
            except Exception:
                pass
        try:
            info["nvrtc"] = ".".join(str(v) for v in cupy.cuda.nvrtc.getVersion())
        except Exception:
            pass
        reason = unavailable_reason()
        if reason is not None and not reason.startswith("CuPy cannot"):
            info["reason"] = reason
            return info
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            dev: dict = {"id": i}
            try:
                props = cupy.cuda.runtime.getDeviceProperties(i)
                name = props.get("name", b"")
                dev["name"] = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                dev["memory_bytes"] = int(props.get("totalGlobalMem", 0))
                dev["compute_capability"] = f"{props.get('major', '?')}.{props.get('minor', '?')}"
                dev["multiprocessors"] = int(props.get("multiProcessorCount", 0))
                with cupy.cuda.Device(i):
                    free, total = cupy.cuda.runtime.memGetInfo()
                dev["free_bytes"] = int(free)
            except Exception as exc:
                dev["error"] = f"{type(exc).__name__}: {exc}"
            info["devices"].append(dev)
        info["reason"] = reason
        info["available"] = reason is None
    except Exception as exc:
        info["available"] = False
        info["reason"] = f"{type(exc).__name__}: {exc}"
    return info


def create_engine(arg: str = "") -> "CUDAEngine":
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


class CUDAEngine:
    """CuPy arrays on one CUDA device; cuBLAS for GEMMs; fused kernels for the rest.

    ``device``: the CUDA device number. ``tf32`` (default ``$DENSENN_TF32``, off):
    float32 GEMMs on TF32 tensor cores. ``graph_gemm``: route every GEMM through the
    cuBLAS handle that CUDA graph capture uses (see :mod:`densenn.backend.cuda_graph`),
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
        self._fns: dict = {}          # (group key, kernel, dtype char, 64-bit index) -> RawKernel
        self._eks: dict = {}          # (group key, kernel) -> ElementwiseKernel (non-contiguous arrays)
        self._groups: dict = {}       # activation/cost/label expressions -> _Group
        self._scratch: dict = {}      # (purpose, dtype) -> device buffer, grown on demand
        self._ones: dict = {}
        self._idx_dev = None          # device int64 buffer for take_rows
        self._idx_host = None         # the indices it holds (host copy), to upload once per batch
        self._graph_blas = None       # cuda_graph.CtypesCublas, created on first use
        self._capture_stream = None
        self._capturing = False       # while a CUDA graph is being recorded
        self.graph_gemm = bool(graph_gemm)
        self._tf32 = False
        self.set_tf32(_env_flag("DENSENN_TF32") if tf32 is None else bool(tf32))
        if cupy.cuda.runtime.getDeviceCount() > 1:
            self._pin_device()
        # one operation at a time: networks may share the engine across threads (a CUDA graph
        # capture, though, records whatever is launched meanwhile: capture from one thread)
        serialize(self, extra=("set_tf32", "release_all", "pool_used_bytes", "pool_total_bytes", "ones",
                               "close"))

    def __repr__(self):
        return f"CUDAEngine(device={self.device_id}, tf32={self._tf32}, graph_gemm={self.graph_gemm})"

    def _pin_device(self):
        # With several GPUs, run every operation with this engine's device current
        # (CuPy launches on the current device). One GPU: no wrapper, no overhead.
        dev = self._device
        for name in ("empty", "zeros", "to_engine", "upload", "to_host", "synchronize", "gemm", "add_bias",
                     "sum_rows", "axpy", "scal", "copy", "fill", "take_rows", "activ", "bias_activ", "prime",
                     "delta", "cost_value", "cost_gradient", "diff", "count_correct", "sgd_update",
                     "adam_update", "pool_used_bytes", "release_all", "capture"):
            method = getattr(self, name)

            def pinned(*args, _m=method, **kwargs):
                with dev:
                    return _m(*args, **kwargs)

            setattr(self, name, pinned)

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
    def _fn(self, group: _Group, name: str, ctype: str, big: bool):
        key = (group.key, name, ctype, big)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = _module(group, ctype, "long long" if big else "unsigned int").get_function(name)
        return fn

    def _ew(self, group: _Group, name: str, ins, outs, scalars=(), bias=None):
        """Run elementwise operation ``name`` of ``group``: one kernel launch."""
        self._check(*ins, *outs)
        first = outs[0]
        shape, dt = first.shape, first.dtype
        for x in (*ins, *outs):
            if x.shape != shape or x.dtype != dt:
                raise DensennError(f"{name}: arrays must share shape and dtype, got {x.shape} {x.dtype} "
                                   f"and {shape} {dt}")
        if dt not in _FLOATS:
            raise DensennError(f"{name}: needs float32 or float64 arrays, got {dt}")
        ncol = shape[-1] if shape else 1
        if bias is not None:
            self._check(bias)
            if bias.ndim != 1 or bias.shape[0] != ncol or bias.dtype != dt:
                raise DensennError(f"{name}: bias must be a vector of {ncol} {dt}, got {bias.shape} {bias.dtype}")
        n = first.size
        if n == 0:
            return first
        t = dt.type
        sc = [t(s) for s in scalars]
        contiguous = all(x._c_contiguous for x in (*ins, *outs)) and (bias is None or bias._c_contiguous)
        if contiguous:
            big = n >= _I32_LIMIT
            it = np.int64 if big else np.uint32
            args = [it(n), *ins, *outs]
            if bias is not None:
                args += [bias, it(ncol)]
            fn = self._fn(group, name, "float" if dt == _F32 else "double", big)
            fn((min((n + BLOCK - 1) // BLOCK, self._max_blocks),), (BLOCK,), (*args, *sc))
        else:
            key = (group.key, name)
            ek = self._eks.get(key)
            if ek is None:
                ek = self._eks[key] = group.ops[name].elementwise()
            extra = [bias, np.int64(ncol)] if bias is not None else []
            ek(*ins, *extra, *sc, *outs)
        self.launches += 1
        return first

    def _group(self, key, make):
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = make()
        return g

    def _act(self, act) -> _Group:
        return self._group(("act", act.c_activ, act.c_prime), lambda: activation_group(act))

    def _cost(self, cost) -> _Group:
        return self._group(("cost", cost.c_loss, cost.c_grad), lambda: cost_group(cost))

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

    def add_bias(self, z, b):
        return self._ew(BASE, "add_bias", (), (z,), (), bias=b)

    def sum_rows(self, x, out):
        self._check(x, out)
        rows, m, ldx = self._matrix("sum_rows x", x)
        if out.shape != (m,) or out.dtype != x.dtype or not out._c_contiguous:
            raise DensennError(f"sum_rows: out must be a contiguous vector of {m} {x.dtype}, got {out.shape} "
                               f"{out.dtype}")
        if x.dtype not in _FLOATS:
            raise DensennError(f"sum_rows needs float32 or float64, got {x.dtype}")
        if m == 0:
            return out
        if rows == 0:
            return self.fill(out, 0.0)
        ct = self._ctype(x.dtype)
        col_blocks = (m + WARP - 1) // WARP
        # enough blocks to fill the GPU: split the rows into chunks, each summed by one block row
        chunks = 1 if rows <= 512 else max(1, min((rows + 127) // 128, (8 * self._sms + col_blocks - 1) // col_blocks,
                                                   1024))
        chunk = (rows + chunks - 1) // chunks
        chunks = (rows + chunk - 1) // chunk
        big = rows * ldx >= _I32_LIMIT or chunks * m >= _I32_LIMIT
        it = np.int64 if big else np.uint32
        target = out if chunks == 1 else self._buffer("sum_rows", x.dtype, chunks * m)
        self._fn(BASE, "sum_rows", ct, big)((col_blocks, chunks), (WARP, 8),
                                            (x, target, it(rows), it(m), it(ldx), it(chunk)))
        self.launches += 1
        if chunks > 1:
            self._fn(BASE, "sum_chunks", ct, big)(((m + BLOCK - 1) // BLOCK,), (BLOCK,),
                                                  (target, out, it(chunks), it(m)))
            self.launches += 1
        return out

    def axpy(self, alpha, x, y):
        return self._ew(BASE, "axpy", (x,), (y,), (alpha,))

    def scal(self, alpha, x):
        return self._ew(BASE, "scal", (), (x,), (alpha,))

    def copy(self, x, y):
        self._check(x, y)
        if x.shape != y.shape:
            raise DensennError(f"copy: shapes differ, {x.shape} and {y.shape}")
        if x.dtype == y.dtype and x._c_contiguous and y._c_contiguous:
            if x.size:
                y.data.copy_from_device_async(x.data, x.nbytes)
                self.launches += 1
            return y
        if x.dtype == y.dtype and x.dtype in _FLOATS:
            return self._ew(BASE, "copy", (x,), (y,))
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
        it_c = _CTYPES[dev_idx.dtype.char]
        group = self._group(("take", it_c), lambda: take_group(it_c))
        m = out.size // n
        total = out.size
        big = total >= _I32_LIMIT
        it = np.int64 if big else np.uint32
        self._fn(group, "take_rows", ct, big)((min((total + BLOCK - 1) // BLOCK, self._max_blocks),), (BLOCK,),
                                              (src, dev_idx, out, it(total), it(m), np.int64(src.shape[0])))
        self.launches += 1
        return out

    def ones(self, n: int, dtype):
        """A device vector of n ones (kept, grown to the largest n asked for)."""
        dt = np.dtype(dtype)
        if dt not in self._ones or self._ones[dt].shape[0] < n:
            self._ones[dt] = cupy.ones(max(n, 1), dtype=dt)
        return self._ones[dt][:n]

    # -- activations -------------------------------------------------------------------------
    def _softmax_args(self, z, a=None):
        rows, m, ldz = self._matrix("softmax z", z)
        if z.dtype not in _FLOATS:
            raise DensennError(f"softmax needs float32 or float64, got {z.dtype}")
        lda = ldz
        if a is not None:
            ra, ma, lda = self._matrix("softmax a", a, z.dtype)
            if (ra, ma) != (rows, m):
                raise DensennError(f"softmax: z and a must have one shape, got {z.shape} and {a.shape}")
        big = max(rows * ldz, rows * lda) >= _I32_LIMIT
        grid = ((rows + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK,)
        return rows, m, ldz, lda, big, grid

    def _row_activation(self, act):
        if act.name != "softmax":
            raise DensennError(f"activation {act.name!r} is not elementwise and the CUDA engine has no kernel for it")

    def activ(self, act, z, a, work=None):
        if act.elementwise:
            return self._ew(self._act(act), "activ", (z,), (a,), (act.param,))
        self._check(z, a)
        self._row_activation(act)
        rows, m, ldz, lda, big, grid = self._softmax_args(z, a)
        if rows and m:
            it = np.int64 if big else np.uint32
            self._fn(BASE, "softmax_fwd", self._ctype(z.dtype), big)(
                grid, (BLOCK,), (z, z, a, it(rows), it(m), it(ldz), it(lda), np.int32(0)))
            self.launches += 1
        return a

    def bias_activ(self, act, z, b, a, work=None):
        if act.elementwise:
            self._ew(self._act(act), "bias_activ", (), (z, a), (act.param,), bias=b)
            return a
        self._check(z, b, a)
        self._row_activation(act)
        rows, m, ldz, lda, big, grid = self._softmax_args(z, a)
        if b.ndim != 1 or b.shape[0] != m or b.dtype != z.dtype or not b._c_contiguous:
            raise DensennError(f"bias_activ: b must be a contiguous vector of {m} {z.dtype}, got {b.shape} {b.dtype}")
        if rows and m:
            it = np.int64 if big else np.uint32
            self._fn(BASE, "softmax_fwd", self._ctype(z.dtype), big)(
                grid, (BLOCK,), (z, b, a, it(rows), it(m), it(ldz), it(lda), np.int32(1)))
            self.launches += 1
        return a

    def prime(self, act, z, work=None):
        if act.elementwise:
            return self._ew(self._act(act), "prime", (), (z,), (act.param,))
        self._check(z)
        self._row_activation(act)
        rows, m, ldz, _, big, grid = self._softmax_args(z)
        if rows and m:
            it = np.int64 if big else np.uint32
            self._fn(BASE, "softmax_prime", self._ctype(z.dtype), big)(grid, (BLOCK,), (z, it(rows), it(m), it(ldz)))
            self.launches += 1
        return z

    def _sum_delta(self, z, db):
        """∇b after a delta pass, when asked for (its own kernel here). Returns z."""
        if db is not None:
            self.sum_rows(z, db)
        return z

    def delta(self, act, z, a, work=None, db=None):
        if act.elementwise:
            self._ew(self._act(act), "delta", (a,), (z,), (act.param,))
            return self._sum_delta(z, db)
        self._check(z, a)
        self._row_activation(act)
        rows, m, ldz, lda, big, grid = self._softmax_args(z, a)
        if rows and m:
            it = np.int64 if big else np.uint32
            self._fn(BASE, "softmax_delta", self._ctype(z.dtype), big)(
                grid, (BLOCK,), (z, a, it(rows), it(m), it(ldz), it(lda)))
            self.launches += 1
        return self._sum_delta(z, db)

    # -- costs and metrics -------------------------------------------------------------------------
    def _acc(self, acc, dt):
        self._check(acc)
        if acc.size < 1 or acc.dtype != dt:
            raise DensennError(f"acc must be a 1-element {dt} device array, got {acc.shape} {acc.dtype}")

    def _reduce_grid(self, work_items: int, per_thread: int) -> int:
        if work_items <= BLOCK * per_thread * 16:
            return 1
        return min((work_items + BLOCK * per_thread - 1) // (BLOCK * per_thread), 1024)

    def _finish(self, part, blocks, acc, ct):
        self._fn(BASE, "finish_sum", ct, False)((1,), (BLOCK,), (part, np.uint32(blocks), acc))
        self.launches += 1

    def cost_value(self, cost, a, y, work, acc):
        self._check(a, y)
        dt = a.dtype
        rows, m, lda = self._matrix("cost_value a", a)
        ry, my, ldy = self._matrix("cost_value y", y, dt)
        if (ry, my) != (rows, m) or dt not in _FLOATS:
            raise DensennError(f"cost_value: a and y must be float arrays of one shape, got {a.shape} {dt} and "
                               f"{y.shape} {y.dtype}")
        self._acc(acc, dt)
        total = rows * m
        if total == 0:
            return acc
        ct = self._ctype(dt)
        big = max(rows * lda, rows * ldy) >= _I32_LIMIT
        it = np.int64 if big else np.uint32
        blocks = self._reduce_grid(total, 8)
        part = self._buffer("reduce", dt, 1024)
        self._fn(self._cost(cost), "cost_value", ct, big)(
            (blocks,), (BLOCK,), (a, y, acc, part, it(rows), it(m), it(lda), it(ldy), dt.type(cost.eps(dt))))
        self.launches += 1
        if blocks > 1:
            self._finish(part, blocks, acc, ct)
        return acc

    def cost_gradient(self, cost, a, y, out, scale, work):
        self._check(a, y, out)
        eps = cost.eps(a.dtype)
        g = self._cost(cost)
        if out.data.ptr == a.data.ptr and out.shape == a.shape and out.strides == a.strides:
            return self._ew(g, "cost_grad_inplace", (y,), (out,), (eps, scale))
        return self._ew(g, "cost_grad", (a, y), (out,), (eps, scale))

    def diff(self, a, y, out, scale):
        return self._ew(BASE, "diff", (a, y), (out,), (scale,))

    def count_correct(self, a, labels, work, acc):
        self._check(a, labels)
        dt = a.dtype
        rows, m, lda = self._matrix("count_correct a", a)
        if labels.ndim != 1 or labels.shape[0] != rows or not labels._c_contiguous:
            raise DensennError(f"count_correct: labels must be a contiguous vector of {rows}, got {labels.shape}")
        lt = _CTYPES.get(labels.dtype.char)
        if lt is None or dt not in _FLOATS:
            raise DensennError(f"count_correct: unsupported dtypes {dt} and {labels.dtype}")
        self._acc(acc, dt)
        if rows == 0 or m == 0:
            return acc
        ct = self._ctype(dt)
        big = rows * lda >= _I32_LIMIT
        it = np.int64 if big else np.uint32
        blocks = self._reduce_grid(rows, 2)
        part = self._buffer("reduce", dt, 1024)
        group = self._group(("count", lt), lambda: count_group(lt))
        self._fn(group, "count_correct", ct, big)((blocks,), (BLOCK,),
                                                   (a, labels, acc, part, it(rows), it(m), it(lda)))
        self.launches += 1
        if blocks > 1:
            self._finish(part, blocks, acc, ct)
        return acc

    # -- optimizers ---------------------------------------------------------------------------------
    def sgd_update(self, w, g, v, lr, momentum, nesterov, weight_decay):
        if v is None:
            return self._ew(BASE, "sgd", (g,), (w,), (lr, weight_decay))
        name = "sgd_nesterov" if nesterov else "sgd_momentum"
        return self._ew(BASE, name, (g,), (w, v), (lr, momentum, weight_decay))

    def adam_update(self, w, g, m, v, step, eps, beta1, beta2, weight_decay, decay, work):
        return self._ew(BASE, "adam", (g,), (w, m, v), (step, eps, beta1, beta2, weight_decay, 1.0 - decay))

    # -- CUDA graphs ------------------------------------------------------------------------------------
    def _graph_blas_handle(self):
        if self._graph_blas is None:
            from densenn.backend.cuda_graph import CtypesCublas

            self._graph_blas = CtypesCublas(self)
            self._graph_blas.set_math_mode(CUBLAS_TF32_TENSOR_OP_MATH if self._tf32 else CUBLAS_DEFAULT_MATH)
        return self._graph_blas

    def capture(self, fn, warmup: int = 1):
        """Record ``fn()`` (engine calls on fixed buffers) into a CUDA graph; returns a
        :class:`~densenn.backend.cuda_graph.GraphStep` whose call replays it with one launch.

        ``fn`` runs ``warmup`` times eagerly first (those runs take effect: a training
        step is trained), then once more while recording (which runs nothing). Scalars
        (learning rate, Adam's step size) are frozen at their recorded values; host
        transfers (take_rows, upload, to_host) are refused while recording.
        """
        from densenn.backend.cuda_graph import capture

        return capture(self, fn, warmup=warmup)


__all__ = ["CUDAEngine", "create_engine", "describe", "unavailable_reason"]
