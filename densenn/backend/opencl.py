"""The OpenCL engine: PyOpenCL arrays, CLBlast GEMMs in place, kernels of our own.

Arrays are ``pyopencl.array.Array``, C-contiguous, in the protocol's row-major
``(rows, cols)`` layout. A row view ``x[a:b]`` is the same buffer starting
``a·cols`` elements in, so every kernel below takes each array as *(buffer,
element offset)*; that is all it takes for ``arr[:n]``, ``acc[1:2]`` and the
optimizer's reshaped scratch views to work without copies.

* **GEMM** goes through ``pyclblast.gemm`` (CLBlast), which speaks row-major
  directly: operands, transposes, alpha, beta, leading dimensions (from the
  row strides) and offsets (from the views) are handed over as they are.
* **Everything else** is one kernel per protocol call, generated from the C
  expressions the activations and costs carry (``c_activ``/``c_prime``,
  ``c_loss``/``c_grad``): ``bias_activ`` is ``z += b; a = f(z)`` in one pass,
  ``delta`` is ``z = f'(z)·a``, each optimizer step is one kernel per parameter.
  Softmax runs one work-item per row (max, exp, sum, divide). ``cost_value`` and
  ``count_correct`` reduce in one work-group and add into a 1-element device
  array, so nothing goes back to the host until ``to_host``.
* Programs are compiled once per engine (i.e. per OpenCL context) and dtype, the
  ones for an activation or a cost when first used; PoCL also keeps compiled
  binaries on disk (``~/.cache/pocl``), CLBlast's included.
* **Counters.** ``uploads`` / ``downloads`` count host↔device copies, including
  the index upload that ``take_rows`` makes for host indices: a batch costs one
  upload.
* **Ownership.** Every operation checks that its arrays belong to this engine's
  context and raises :class:`DensennError` otherwise (a NumPy array passed by
  mistake is reported, not read as garbage).

Importing this module needs neither PyOpenCL nor a device; :func:`create_engine`
(what ``get_engine("opencl")`` calls) raises :class:`EngineUnavailable` naming
what to install, and :func:`list_devices` / :func:`describe` never raise.
An engine is not thread-safe: one thread queues its work.
"""
from __future__ import annotations

import os
from string import Template

import numpy as np

from densenn.backend.base import serialize
from densenn.errors import DensennError, EngineUnavailable

try:
    import pyopencl as cl
    import pyopencl.array as cla
except Exception as _exc:  # ImportError (pyopencl or mako missing) or a broken ICD loader
    cl = cla = None
    _OPENCL_ERROR: Exception | None = _exc
else:
    _OPENCL_ERROR = None

try:
    import pyclblast
except Exception as _exc:
    pyclblast = None
    _CLBLAST_ERROR: Exception | None = _exc
else:
    _CLBLAST_ERROR = None

INSTALL_HINT = ('pip install "densenn[opencl]" (PyOpenCL with PoCL, a CPU OpenCL device, '
                'plus pyclblast, which builds against CLBlast: apt-get install libclblast-dev cmake)')
NO_PLATFORM_HINT = ('install an OpenCL driver: PoCL for the CPU (pip install "pyopencl[pocl]"), '
                    "or your GPU vendor's ICD (e.g. nvidia-opencl-icd, intel-opencl-icd, rocm-opencl)")
DEVICE_ENV = "DENSENN_OPENCL_DEVICE"

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_L = np.int64            # every size and offset crosses into the kernels as a C long

#: NumPy dtype -> OpenCL C type, for the kernels that move data of any type
_CTYPES = {np.dtype(k): v for k, v in {
    np.float32: "float", np.float64: "double", np.int8: "char", np.uint8: "uchar",
    np.int16: "short", np.uint16: "ushort", np.int32: "int", np.uint32: "uint",
    np.int64: "long", np.uint64: "ulong", np.bool_: "uchar"}.items()}

GROUP = 256              # work-items per group, capped by what the device allows per kernel


# =========================================================================================
# Kernel sources
#
# Conventions: T is the float type (typedef'd per program); an array argument is a
# pointer plus a ``long`` element offset (``z, z0``); elementwise kernels take the
# element count ``n`` last and run one work-item per element, the global size rounded
# up to whole groups (so no work-item may assume it is in range).
# =========================================================================================
_PRELUDE = Template("""\
$pragma
typedef $T T;
""")

_FP64_PRAGMA = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable"

_BASE = """
__kernel void add_bias(__global T *z, const long z0, __global const T *b, const long b0,
                       const long cols, const long n)
{
    const long i = get_global_id(0);
    if (i >= n) return;
    z[z0 + i] += b[b0 + i % cols];
}

/* One work-item per column adds down the rows: deterministic, no atomics. */
__kernel void sum_rows(__global const T *x, const long x0, __global T *out, const long out0,
                       const long rows, const long n)
{
    const long j = get_global_id(0);
    if (j >= n) return;
    T s = (T)0;
    for (long i = 0; i < rows; ++i) s += x[x0 + i * n + j];
    out[out0 + j] = s;
}

__kernel void axpy(const T alpha, __global const T *x, const long x0, __global T *y, const long y0,
                   const long n)
{
    const long i = get_global_id(0);
    if (i < n) y[y0 + i] += alpha * x[x0 + i];
}

__kernel void scal(const T alpha, __global T *x, const long x0, const long n)
{
    const long i = get_global_id(0);
    if (i < n) x[x0 + i] *= alpha;
}

/* out = scale (a - y); out may be a or y. */
__kernel void diff(__global const T *a, const long a0, __global const T *y, const long y0,
                   __global T *out, const long out0, const T scale, const long n)
{
    const long i = get_global_id(0);
    if (i < n) out[out0 + i] = (a[a0 + i] - y[y0 + i]) * scale;
}

/* Plain SGD with L2 weight decay: w -= lr (g + wd w). */
__kernel void sgd(__global T *w, const long w0, __global const T *g, const long g0,
                  const T lr, const T wd, const long n)
{
    const long i = get_global_id(0);
    if (i >= n) return;
    const T wi = w[w0 + i];
    w[w0 + i] = wi - lr * (g[g0 + i] + wd * wi);
}

/* SGD with momentum: v = mu v - lr g; w += v, or (Nesterov) w += mu v - lr g. */
__kernel void sgd_momentum(__global T *w, const long w0, __global const T *g, const long g0,
                           __global T *v, const long v0, const T lr, const T mu,
                           const int nesterov, const T wd, const long n)
{
    const long i = get_global_id(0);
    if (i >= n) return;
    const T wi = w[w0 + i];
    const T gi = g[g0 + i] + wd * wi;
    const T vi = mu * v[v0 + i] - lr * gi;
    v[v0 + i] = vi;
    w[w0 + i] = nesterov ? wi + (mu * vi - lr * gi) : wi + vi;
}

/* Adam: step and eps carry the bias correction; keep = 1 - decay is AdamW's decoupled decay. */
__kernel void adam(__global T *w, const long w0, __global const T *g, const long g0,
                   __global T *m, const long m0, __global T *v, const long v0,
                   const T step, const T eps, const T beta1, const T beta2, const T wd, const T keep,
                   const long n)
{
    const long i = get_global_id(0);
    if (i >= n) return;
    const T wi = w[w0 + i];
    const T gi = g[g0 + i] + wd * wi;
    const T mi = beta1 * m[m0 + i] + ((T)1 - beta1) * gi;
    const T vi = beta2 * v[v0 + i] + ((T)1 - beta2) * gi * gi;
    m[m0 + i] = mi;
    v[v0 + i] = vi;
    w[w0 + i] = keep * wi - step * mi / (sqrt(vi) + eps);
}
"""

#: the tree sum used by the two reductions (the group size is a power of two)
_GROUP_SUM = """
T group_sum(T s, __local T *part)
{
    const size_t lid = get_local_id(0);
    part[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (size_t h = get_local_size(0) / 2; h > 0; h >>= 1) {
        if (lid < h) part[lid] += part[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return part[0];
}
"""

#: one elementwise activation, from its C expressions of z (and parameter p)
_ACTIVATION = Template("""
T act_f(const T z, const T p) { return $activ; }
T act_fprime(const T z, const T p) { return $prime; }

__kernel void activ(__global const T *z, const long z0, __global T *a, const long a0,
                    const T p, const long n)
{
    const long i = get_global_id(0);
    if (i < n) a[a0 + i] = act_f(z[z0 + i], p);
}

/* The forward step after the GEMM: z += b, a = f(z), one pass over z. */
__kernel void bias_activ(__global T *z, const long z0, __global const T *b, const long b0,
                         __global T *a, const long a0, const long cols, const T p, const long n)
{
    const long i = get_global_id(0);
    if (i >= n) return;
    const T zi = z[z0 + i] + b[b0 + i % cols];
    z[z0 + i] = zi;
    a[a0 + i] = act_f(zi, p);
}

__kernel void prime(__global T *z, const long z0, const T p, const long n)
{
    const long i = get_global_id(0);
    if (i < n) z[z0 + i] = act_fprime(z[z0 + i], p);
}

/* The backward step: delta = f'(z) * signal, into z. */
__kernel void delta(__global T *z, const long z0, __global const T *a, const long a0,
                    const T p, const long n)
{
    const long i = get_global_id(0);
    if (i < n) z[z0 + i] = act_fprime(z[z0 + i], p) * a[a0 + i];
}
""")

#: softmax, one work-item per row (sample); n is the number of rows
_SOFTMAX = """
/* s = exp(z - max z) / sum exp(z - max z) over one row. s may be z itself: every z[j]
   is read before s[j] is written. */
void softmax_row(__global const T *z, __global T *s, const long cols)
{
    T m = z[0];
    for (long j = 1; j < cols; ++j) m = fmax(m, z[j]);
    T sum = (T)0;
    for (long j = 0; j < cols; ++j) { const T e = exp(z[j] - m); s[j] = e; sum += e; }
    for (long j = 0; j < cols; ++j) s[j] /= sum;
}

__kernel void softmax_activ(__global const T *z, const long z0, __global T *a, const long a0,
                            const long cols, const long n)
{
    const long r = get_global_id(0);
    if (r < n) softmax_row(z + z0 + r * cols, a + a0 + r * cols, cols);
}

__kernel void softmax_bias_activ(__global T *z, const long z0, __global const T *b, const long b0,
                                 __global T *a, const long a0, const long cols, const long n)
{
    const long r = get_global_id(0);
    if (r >= n) return;
    __global T *zr = z + z0 + r * cols;
    for (long j = 0; j < cols; ++j) zr[j] += b[b0 + j];
    softmax_row(zr, a + a0 + r * cols, cols);
}

/* The diagonal of the Jacobian only, s(1 - s), into z. */
__kernel void softmax_prime(__global T *z, const long z0, const long cols, const long n)
{
    const long r = get_global_id(0);
    if (r >= n) return;
    __global T *zr = z + z0 + r * cols;
    softmax_row(zr, zr, cols);
    for (long j = 0; j < cols; ++j) zr[j] = zr[j] * ((T)1 - zr[j]);
}

/* The full Jacobian-vector product: z = s * (g - sum_j s_j g_j), g the signal in a. */
__kernel void softmax_delta(__global T *z, const long z0, __global const T *a, const long a0,
                            const long cols, const long n)
{
    const long r = get_global_id(0);
    if (r >= n) return;
    __global T *zr = z + z0 + r * cols;
    __global const T *g = a + a0 + r * cols;
    softmax_row(zr, zr, cols);
    T dot = (T)0;
    for (long j = 0; j < cols; ++j) dot += zr[j] * g[j];
    for (long j = 0; j < cols; ++j) zr[j] = zr[j] * (g[j] - dot);
}
"""

#: one cost, from its C expressions of a, y (and the clip constant eps)
_COST = Template("""
T loss_term(const T a, const T y, const T eps) { return $loss; }
T grad_term(const T a, const T y, const T eps) { return $grad; }

/* acc[0] += sum of the loss terms, in a single work-group (batch-sized inputs). */
__kernel void cost_value(__global const T *a, const long a0, __global const T *y, const long y0,
                         __global T *acc, const long acc0, const T eps, __local T *part, const long n)
{
    T s = (T)0;
    for (long i = get_local_id(0); i < n; i += get_local_size(0))
        s += loss_term(a[a0 + i], y[y0 + i], eps);
    s = group_sum(s, part);
    if (get_local_id(0) == 0) acc[acc0] += s;
}

/* out = scale dC/da; out may be a. */
__kernel void cost_gradient(__global const T *a, const long a0, __global const T *y, const long y0,
                            __global T *out, const long out0, const T scale, const T eps, const long n)
{
    const long i = get_global_id(0);
    if (i < n) out[out0 + i] = grad_term(a[a0 + i], y[y0 + i], eps) * scale;
}
""")

#: accuracy: labels of integer type L; the predicted class is the first argmax of the
#: row (NaN counts as the maximum, as in NumPy), or a > 0.5 for a single output
_COUNT = Template("""
typedef $L L;

__kernel void count_correct(__global const T *a, const long a0, __global const L *labels,
                            const long l0, __global T *acc, const long acc0, const long cols,
                            __local T *part, const long n)
{
    T s = (T)0;
    for (long r = get_local_id(0); r < n; r += get_local_size(0)) {
        __global const T *row = a + a0 + r * cols;
        long pred = 0;
        if (cols == 1) {
            pred = row[0] > (T)0.5 ? 1 : 0;
        } else {
            T best = row[0];
            for (long j = 1; j < cols && !isnan(best); ++j)
                if (row[j] > best || isnan(row[j])) { best = row[j]; pred = j; }
        }
        s += (pred == (long)labels[l0 + r]) ? (T)1 : (T)0;
    }
    s = group_sum(s, part);
    if (get_local_id(0) == 0) acc[acc0] += s;
}
""")

#: out = src[idx] (rows), indices clipped into range like numpy.take(mode="clip")
_TAKE = Template("""
typedef $S S;
typedef $I I;

__kernel void take_rows(__global const S *src, const long src0, const long src_rows,
                        __global const I *idx, const long idx0, __global S *out, const long out0,
                        const long cols, const long n)
{
    const long i = get_global_id(0);
    if (i >= n) return;
    const long r = i / cols, j = i - r * cols;
    long k = (long)idx[idx0 + r];
    k = k < 0 ? 0 : (k >= src_rows ? src_rows - 1 : k);
    out[out0 + i] = src[src0 + k * cols + j];
}
""")


# =========================================================================================
# Devices
# =========================================================================================
class DeviceList(list):
    """A list of device dicts that also says, in ``reason``, why the engine can't run (None if it can)."""

    def __init__(self, devices=(), reason: str | None = None):
        super().__init__(devices)
        self.reason = reason


def _unavailable_reason() -> str | None:
    if _OPENCL_ERROR is not None:
        name = getattr(_OPENCL_ERROR, "name", None)
        what = f"the Python package {name!r}" if name else f"PyOpenCL ({_OPENCL_ERROR})"
        return f"engine 'opencl' needs {what}: {INSTALL_HINT}"
    if _CLBLAST_ERROR is not None:
        return (f"engine 'opencl' needs pyclblast for its matrix products ({_CLBLAST_ERROR}): "
                "apt-get install libclblast-dev cmake, then pip install pyclblast")
    return None


def _platforms():
    """[(platform, [devices])], or EngineUnavailable when no OpenCL platform is installed."""
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:   # PLATFORM_NOT_FOUND_KHR from the ICD loader
        raise EngineUnavailable(f"engine 'opencl' found no OpenCL platform ({exc}); {NO_PLATFORM_HINT}") from None
    if not platforms:
        raise EngineUnavailable(f"engine 'opencl' found no OpenCL platform; {NO_PLATFORM_HINT}")
    out = []
    for p in platforms:
        try:
            devices = p.get_devices()
        except cl.Error:      # a platform without devices (DEVICE_NOT_FOUND)
            devices = []
        out.append((p, devices))
    if not any(devices for _, devices in out):
        raise EngineUnavailable(f"engine 'opencl' found OpenCL platforms but no device; {NO_PLATFORM_HINT}")
    return out


def _device_type(device) -> str:
    t = device.type
    for flag, name in ((cl.device_type.GPU, "GPU"), (cl.device_type.CPU, "CPU"),
                       (cl.device_type.ACCELERATOR, "accelerator")):
        if t & flag:
            return name
    return "other"


def _has_fp64(device) -> bool:
    return "cl_khr_fp64" in device.extensions.split()


def _device_info(p_index, platform, d_index, device) -> dict:
    return {"id": f"{p_index}:{d_index}", "engine": f"opencl:{p_index}:{d_index}",
            "platform": platform.name.strip(), "device": device.name.strip(),
            "type": _device_type(device), "fp64": _has_fp64(device),
            "memory": int(device.global_mem_size), "compute_units": int(device.max_compute_units),
            "version": device.version.strip()}


def list_devices() -> DeviceList:
    """Every OpenCL device as a dict (``id`` "P:D", platform, device, type, fp64, memory in bytes, ...).

    Never raises: without PyOpenCL or a platform it returns an empty list whose
    ``reason`` attribute says why (``reason`` is also set when pyclblast is missing).
    """
    if _OPENCL_ERROR is not None:
        return DeviceList([], _unavailable_reason())
    try:
        found = _platforms()
    except EngineUnavailable as exc:
        return DeviceList([], str(exc))
    except Exception as exc:   # a broken driver must not break `densenn info`
        return DeviceList([], f"{type(exc).__name__}: {exc}")
    devices = [_device_info(pi, p, di, d) for pi, (p, ds) in enumerate(found) for di, d in enumerate(ds)]
    return DeviceList(devices, _unavailable_reason())


def describe() -> dict:
    """{"available": bool, "reason": str | None, "devices": [...]} for ``densenn info``; never raises."""
    devices = list_devices()
    return {"available": devices.reason is None and bool(devices), "reason": devices.reason,
            "devices": list(devices)}


def _listing(found) -> str:
    return "; ".join(f"{pi}:{di} = {d.name.strip()} ({_device_type(d)}, {p.name.strip()})"
                     for pi, (p, ds) in enumerate(found) for di, d in enumerate(ds)) or "none"


def _pick_device(spec: str, source: str):
    """The device for "P:D" (``source`` names where the text came from), or the default one."""
    found = _platforms()
    if not spec:
        for want_gpu in (True, False):   # the first GPU over all platforms, else the first device
            for _, devices in found:
                for d in devices:
                    if not want_gpu or d.type & cl.device_type.GPU:
                        return d
    parts = spec.split(":")
    try:
        p_index, d_index = (int(v) for v in parts)
    except ValueError:
        raise DensennError(f"{source} must be 'P:D' (platform and device numbers, e.g. '0:0'), got {spec!r}; "
                           f"devices here: {_listing(found)}") from None
    if not (0 <= p_index < len(found) and 0 <= d_index < len(found[p_index][1])):
        raise DensennError(f"no OpenCL device {p_index}:{d_index} ({source}); devices here: {_listing(found)}")
    return found[p_index][1][d_index]


def create_engine(arg: str = "") -> "OpenCLEngine":
    """The engine for ``get_engine("opencl[:P:D]")``: ``arg`` is "" or "P:D".

    "" picks ``$DENSENN_OPENCL_DEVICE`` when set, else the first GPU over all
    platforms, else the first device. Raises EngineUnavailable when PyOpenCL,
    pyclblast or an OpenCL platform is missing, DensennError for a bad "P:D".
    """
    reason = _unavailable_reason()
    if reason:
        raise EngineUnavailable(reason)
    arg = (arg or "").strip()
    if arg:
        device = _pick_device(arg, f"engine 'opencl:{arg}'")
    else:
        env = os.environ.get(DEVICE_ENV, "").strip()
        device = _pick_device(env, f"${DEVICE_ENV}") if env else _pick_device("", "")
    return OpenCLEngine(device)


# =========================================================================================
# The engine
# =========================================================================================
def _pow2_floor(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


class _Kernel:
    """A compiled kernel and the group size that suits it on one device."""

    __slots__ = ("kernel", "group")

    def __init__(self, program, name: str, device):
        self.kernel = cl.Kernel(program, name)
        limit = self.kernel.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, device)
        # a power of two: the reductions halve it
        self.group = _pow2_floor(min(GROUP, limit))

    def over(self, queue, n: int, *args):
        """One work-item per index below n (n is passed as the last argument)."""
        if n > 0:
            g = self.group
            self.kernel(queue, ((n + g - 1) // g * g,), (g,), *args, _L(n))

    def one_group(self, queue, itemsize: int, n: int, *args):
        """One work-group (a reduction into one value), with local scratch of one T per work-item."""
        g = self.group
        self.kernel(queue, (g,), (g,), *args, cl.LocalMemory(g * itemsize), _L(n))


class OpenCLEngine:
    """PyOpenCL arrays, CLBlast GEMMs, own kernels. See the module docstring.

    ``device`` is a ``pyopencl.Device``; use :func:`create_engine` (or
    ``get_engine("opencl")``) to pick one by number.
    """

    name = "opencl"
    #: labels and batch indices are int32 on the device
    index_dtype = np.dtype(np.int32)

    def __init__(self, device):
        if cl is None:
            raise EngineUnavailable(_unavailable_reason())
        self.device = device
        self.device_name = f"{device.name.strip()} ({device.platform.name.strip()})"
        self.context = cl.Context([device])
        # in order: each call may rely on everything queued before it, no events needed
        self.queue = cl.CommandQueue(self.context)
        self.fp64 = _has_fp64(device)
        self.uploads = 0        # host→device copies
        self.downloads = 0      # device→host copies
        self._kernels: dict = {}
        self._idx = None        # int32 device buffer for take_rows' host indices, grown on demand
        self._pending = None    # the last non-blocking upload (see _write)
        serialize(self)         # one operation at a time: networks may share the engine across threads

    def __repr__(self):
        return f"OpenCLEngine({self.device_name!r})"

    # -- programs ------------------------------------------------------------------------
    def _build(self, key, source: str, names, what: str, fp64: bool):
        """Compile ``source`` once and cache its kernels under (key, name)."""
        pragma = _FP64_PRAGMA if fp64 else ""
        try:
            program = cl.Program(self.context, _PRELUDE.substitute(pragma=pragma, T=key[1]) + source).build()
        except cl.Error as exc:
            raise DensennError(f"OpenCL could not compile the kernels for {what} on {self.device_name}: {exc}") from None
        for name in names:
            self._kernels[key + (name,)] = _Kernel(program, name, self.device)

    def _kernel(self, kind: str, dt: np.dtype, name: str, spec=None) -> _Kernel:
        """The kernel ``name`` of the program ``kind`` for float dtype ``dt`` (and activation/cost/label type)."""
        ct = _CTYPES[dt]
        key = (kind, ct, spec)
        try:
            return self._kernels[key + (name,)]
        except KeyError:
            pass
        if kind == "base":
            self._build(key, _BASE, ("add_bias", "sum_rows", "axpy", "scal", "diff", "sgd",
                                     "sgd_momentum", "adam"), "the basic operations", dt == _F64)
        elif kind == "softmax":
            self._build(key, _SOFTMAX, ("softmax_activ", "softmax_bias_activ", "softmax_prime",
                                        "softmax_delta"), "softmax", dt == _F64)
        elif kind == "activation":           # spec: (c_activ, c_prime, name)
            source = _ACTIVATION.substitute(activ=spec[0], prime=spec[1])
            self._build(key, source, ("activ", "bias_activ", "prime", "delta"),
                        f"activation {spec[2]!r}", dt == _F64)
        elif kind == "cost":                 # spec: (c_loss, c_grad, name)
            source = _GROUP_SUM + _COST.substitute(loss=spec[0], grad=spec[1])
            self._build(key, source, ("cost_value", "cost_gradient"), f"cost {spec[2]!r}", dt == _F64)
        elif kind == "count":                # spec: label dtype
            source = _GROUP_SUM + _COUNT.substitute(L=_CTYPES[spec])
            self._build(key, source, ("count_correct",), "count_correct", dt == _F64)
        elif kind == "take":                 # dt: the data type; spec: index dtype
            source = _TAKE.substitute(S=ct, I=_CTYPES[spec])
            self._build(key, source, ("take_rows",), "take_rows", dt == _F64)
        else:
            raise AssertionError(kind)
        return self._kernels[key + (name,)]

    # -- checks ----------------------------------------------------------------------------
    def _foreign(self, op: str, name: str, x) -> DensennError:
        if isinstance(x, np.ndarray):
            owner, what = "'cpu'", "a NumPy array"
        elif cla is not None and isinstance(x, cla.Array):
            owner, what = "'opencl' on another OpenCL context", "an OpenCL array"
        elif type(x).__module__.startswith("cupy"):
            owner, what = "'cuda'", "a CuPy array"
        else:
            return DensennError(f"{op}: {name} must be an array of engine {self.name!r} ({self.device_name}), "
                                f"got {type(x).__name__}")
        return DensennError(f"{op}: {name} ({what}) belongs to engine {owner}, not {self.name!r} "
                            f"({self.device_name}); move it with engine.to_engine or engine.upload")

    def _arg(self, op: str, name: str, x, dtype=None):
        """(buffer, element offset) of ``x`` after checking it is a C-contiguous array of this engine."""
        if not isinstance(x, cla.Array) or not (x.context is self.context or x.context == self.context):
            raise self._foreign(op, name, x)
        if dtype is not None and x.dtype != dtype:
            raise DensennError(f"{op}: {name} must be {np.dtype(dtype).name}, got {x.dtype}")
        if not x.flags.c_contiguous:
            raise DensennError(f"{op}: {name} must be C-contiguous (a row view x[a:b] is; a column slice is not)")
        return x.base_data, _L(x.offset // x.dtype.itemsize)

    def _float(self, op: str, name: str, x) -> np.dtype:
        dt = x.dtype
        if dt != _F32 and dt != _F64:
            raise DensennError(f"{op}: {name} must be float32 or float64, got {dt}")
        return dt

    @staticmethod
    def _same_size(op: str, **arrays):
        sizes = {name: x.size for name, x in arrays.items()}
        if len(set(sizes.values())) > 1:
            shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in arrays.items())
            raise DensennError(f"{op}: arrays must have the same number of elements, got {shapes}")

    @staticmethod
    def _matrix(op: str, name: str, x):
        if x.ndim != 2:
            raise DensennError(f"{op}: {name} must be 2-D (rows, cols), got shape {tuple(x.shape)}")
        return x.shape

    def _acc(self, op: str, acc, dt):
        arg = self._arg(op, "acc", acc, dt)
        if acc.size < 1:
            raise DensennError(f"{op}: acc must hold one element")
        return arg

    # -- memory ------------------------------------------------------------------------------
    def supports(self, dtype) -> bool:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            return False
        return dt == _F32 or (dt == _F64 and self.fp64)

    def _alloc_dtype(self, dtype) -> np.dtype:
        dt = np.dtype(dtype)
        if dt not in _CTYPES:
            raise DensennError(f"engine 'opencl' has no arrays of dtype {dt}")
        if dt == _F64 and not self.fp64:
            raise DensennError(f"engine 'opencl' does not support float64 on {self.device_name} "
                               "(the device lacks cl_khr_fp64)")
        return dt

    def empty(self, shape, dtype):
        return cla.empty(self.queue, shape, self._alloc_dtype(dtype))

    def zeros(self, shape, dtype):
        return self.fill(self.empty(shape, dtype), 0)

    def _write(self, out, host: np.ndarray, blocking: bool):
        """Copy the C-contiguous ``host`` into ``out`` (counted as one upload)."""
        self.uploads += 1
        if host.nbytes == 0:
            return out
        event = cl.enqueue_copy(self.queue, out.base_data, host, dst_offset=out.offset, is_blocking=blocking)
        if not blocking:
            # The NannyEvent keeps `host` alive until the copy is done, and waits for it when
            # it is freed: keep it until the next upload so that freeing it does not stall now.
            self._pending = event
        return out

    def to_engine(self, host, dtype=None):
        if cla is not None and isinstance(host, cla.Array) and self.owns(host):
            if (dtype is None or np.dtype(dtype) == host.dtype) and host.flags.c_contiguous:
                return host
            host = self.to_host(host)
        elif not isinstance(host, np.ndarray) and hasattr(host, "get"):   # another engine's array
            host = host.get()
        try:
            h = np.ascontiguousarray(host, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise DensennError(f"to_engine: cannot make an array from {type(host).__name__} ({exc})") from None
        out = self.empty(h.shape, h.dtype)
        return self._write(out, h, blocking=True)

    def upload(self, host, out):
        self._arg("upload", "out", out)
        h = np.ascontiguousarray(host, dtype=out.dtype)
        if h.size != out.size:
            raise DensennError(f"upload: host array of shape {h.shape} does not fit device array of shape "
                               f"{tuple(out.shape)}")
        if isinstance(host, np.ndarray) and np.may_share_memory(h, host):
            h = h.copy()   # the copy runs asynchronously: the caller may reuse its array at once
        return self._write(out, h, blocking=False)

    def to_host(self, x):
        self._arg("to_host", "x", x)
        self.downloads += 1
        return x.get(queue=self.queue)   # blocking: waits for the work queued before

    def owns(self, x) -> bool:
        return cla is not None and isinstance(x, cla.Array) and (x.context is self.context or
                                                                 x.context == self.context)

    def nbytes(self, x) -> int:
        return int(x.nbytes)

    def release(self, x) -> None:
        """Free the buffer behind ``x`` now. Views (anything smaller than its buffer) release nothing:
        their owner does."""
        if x is None or not self.owns(x):
            return None
        buf = x.base_data
        if buf is None or x.offset != 0 or x.nbytes != buf.size:
            return None
        try:
            buf.release()
        except cl.Error:   # already released
            pass
        return None

    def synchronize(self) -> None:
        self.queue.finish()

    # -- BLAS-like ---------------------------------------------------------------------------
    def gemm(self, alpha, a, b, beta, c, trans_a=False, trans_b=False):
        # CLBlast takes the buffers from the arrays and the views' offsets from us
        _, a_off = self._arg("gemm", "a", a)
        _, b_off = self._arg("gemm", "b", b)
        _, c_off = self._arg("gemm", "c", c)
        dt = self._float("gemm", "c", c)
        if a.dtype != dt or b.dtype != dt:
            raise DensennError(f"gemm: a, b and c must share one dtype, got {a.dtype}, {b.dtype}, {c.dtype}")
        (ar, ac), (br, bc), (m, n) = (self._matrix("gemm", k, x) for k, x in (("a", a), ("b", b), ("c", c)))
        k = ar if trans_a else ac
        op_a = (ac, ar) if trans_a else (ar, ac)
        op_b = (bc, br) if trans_b else (br, bc)
        if op_a[0] != m or op_b != (k, n):
            raise DensennError(f"gemm: op(a) {op_a} · op(b) {op_b} does not fit c {(m, n)} "
                               f"(trans_a={bool(trans_a)}, trans_b={bool(trans_b)})")
        if m == 0 or n == 0:
            return c
        if k == 0:       # CLBlast rejects empty dimensions; op(a)·op(b) is zero
            return self.fill(c, 0) if beta == 0 else self.scal(beta, c)
        try:
            # row-major, C-contiguous: each leading dimension is the stored row length
            pyclblast.gemm(self.queue, m, n, k, a, b, c, a_ld=ac, b_ld=bc, c_ld=n,
                           alpha=float(alpha), beta=float(beta), a_transp=bool(trans_a), b_transp=bool(trans_b),
                           a_offset=int(a_off), b_offset=int(b_off), c_offset=int(c_off))
        except RuntimeError as exc:
            raise DensennError(f"gemm: CLBlast failed on {self.device_name}: {exc}") from None
        return c

    def add_bias(self, z, b):
        z_arg = self._arg("add_bias", "z", z)
        dt = self._float("add_bias", "z", z)
        b_arg = self._arg("add_bias", "b", b, dt)
        rows, cols = self._matrix("add_bias", "z", z)
        if b.size != cols:
            raise DensennError(f"add_bias: b must have {cols} elements, got shape {tuple(b.shape)}")
        self._kernel("base", dt, "add_bias").over(self.queue, z.size, *z_arg, *b_arg, _L(cols))
        return z

    def sum_rows(self, x, out):
        x_arg = self._arg("sum_rows", "x", x)
        dt = self._float("sum_rows", "x", x)
        out_arg = self._arg("sum_rows", "out", out, dt)
        rows, cols = self._matrix("sum_rows", "x", x)
        if out.size != cols:
            raise DensennError(f"sum_rows: out must have {cols} elements, got shape {tuple(out.shape)}")
        self._kernel("base", dt, "sum_rows").over(self.queue, cols, *x_arg, *out_arg, _L(rows))
        return out

    def axpy(self, alpha, x, y):
        x_arg = self._arg("axpy", "x", x)
        dt = self._float("axpy", "x", x)
        y_arg = self._arg("axpy", "y", y, dt)
        self._same_size("axpy", x=x, y=y)
        self._kernel("base", dt, "axpy").over(self.queue, y.size, dt.type(alpha), *x_arg, *y_arg)
        return y

    def scal(self, alpha, x):
        x_arg = self._arg("scal", "x", x)
        dt = self._float("scal", "x", x)
        self._kernel("base", dt, "scal").over(self.queue, x.size, dt.type(alpha), *x_arg)
        return x

    def copy(self, x, y):
        x_buf, x_off = self._arg("copy", "x", x)
        y_buf, y_off = self._arg("copy", "y", y, x.dtype)
        self._same_size("copy", x=x, y=y)
        if x.nbytes and not (x_buf == y_buf and x_off == y_off):
            # a device-side copy, no kernel (the regions must not overlap, as in BLAS copy)
            cl.enqueue_copy(self.queue, y_buf, x_buf, byte_count=x.nbytes,
                            src_offset=x.offset, dst_offset=y.offset)
        return y

    def fill(self, x, value):
        buf, _ = self._arg("fill", "x", x)
        if x.nbytes:
            pattern = np.array(value, dtype=np.uint8 if x.dtype == np.bool_ else x.dtype)
            cl.enqueue_fill_buffer(self.queue, buf, pattern, x.offset, x.nbytes)
        return x

    def take_rows(self, src, idx, out):
        """out = src[idx] (rows; indices clipped into range like ``numpy.take(mode="clip")``).

        ``idx`` is an integer array of this engine, or a host integer array: that one is
        uploaded (one counted upload) into an index buffer the engine keeps and grows."""
        src_arg = self._arg("take_rows", "src", src)
        out_arg = self._arg("take_rows", "out", out, src.dtype)
        if isinstance(idx, cla.Array):
            idx_arg = self._arg("take_rows", "idx", idx)
            if idx.ndim != 1 or idx.dtype.kind not in "iu":
                raise DensennError(f"take_rows: idx must be a 1-D integer array, got {idx.dtype} {tuple(idx.shape)}")
        else:
            host = np.asarray(idx)
            if host.ndim != 1 or not (host.dtype.kind in "iu" or host.size == 0):
                raise DensennError(f"take_rows: idx must be a 1-D array of integers, got {host.dtype} {host.shape}")
            idx = self._index_buffer(host.shape[0])
            # clip on the host as numpy.take(mode="clip") does, so int64 indices fit int32
            self._write(idx, np.clip(host, 0, max(src.shape[0] - 1, 0)).astype(np.int32), blocking=False)
            idx_arg = (idx.base_data, _L(0))
        n = idx.shape[0]
        if src.ndim not in (1, 2) or tuple(out.shape) != (n,) + tuple(src.shape[1:]):
            raise DensennError(f"take_rows: out must have shape {(n,) + tuple(src.shape[1:])}, got {tuple(out.shape)}")
        if n and src.shape[0] == 0:
            raise DensennError("take_rows: cannot take rows from an empty src")
        cols = src.shape[1] if src.ndim == 2 else 1
        if n * cols == 0:
            return out
        self._kernel("take", src.dtype, "take_rows", idx.dtype).over(
            self.queue, n * cols, *src_arg, _L(src.shape[0]), *idx_arg, *out_arg, _L(cols))
        return out

    def _index_buffer(self, n: int):
        """The engine's int32 index buffer, at least n long; a view of its first n."""
        if self._idx is None or self._idx.shape[0] < n:
            if self._idx is not None:
                self.synchronize()          # queued gathers may still read the old buffer
                self.release(self._idx)
            self._idx = cla.empty(self.queue, (max(n, 1024),), np.int32)
        return self._idx[:n]

    # -- activations ----------------------------------------------------------------------------
    def _act(self, act, op: str, dt: np.dtype) -> _Kernel:
        if not act.elementwise:
            if act.name != "softmax":
                raise DensennError(f"engine 'opencl' has no kernels for the row-wise activation {act.name!r}")
            return self._kernel("softmax", dt, f"softmax_{op}")
        if not act.c_activ or not act.c_prime:
            raise DensennError(f"activation {act.name!r} has no C expressions (c_activ, c_prime) to compile")
        return self._kernel("activation", dt, op, (act.c_activ, act.c_prime, act.name))

    def activ(self, act, z, a, work=None):
        z_arg = self._arg("activ", "z", z)
        dt = self._float("activ", "z", z)
        a_arg = self._arg("activ", "a", a, dt)
        self._same_size("activ", z=z, a=a)
        if act.elementwise:
            self._act(act, "activ", dt).over(self.queue, z.size, *z_arg, *a_arg, dt.type(act.param))
        else:
            rows, cols = self._matrix("activ", "z", z)
            self._act(act, "activ", dt).over(self.queue, rows if cols else 0, *z_arg, *a_arg, _L(cols))
        return a

    def bias_activ(self, act, z, b, a, work=None):
        z_arg = self._arg("bias_activ", "z", z)
        dt = self._float("bias_activ", "z", z)
        b_arg = self._arg("bias_activ", "b", b, dt)
        a_arg = self._arg("bias_activ", "a", a, dt)
        self._same_size("bias_activ", z=z, a=a)
        rows, cols = self._matrix("bias_activ", "z", z)
        if b.size != cols:
            raise DensennError(f"bias_activ: b must have {cols} elements, got shape {tuple(b.shape)}")
        if act.elementwise:
            self._act(act, "bias_activ", dt).over(self.queue, z.size, *z_arg, *b_arg, *a_arg, _L(cols),
                                                  dt.type(act.param))
        else:
            self._act(act, "bias_activ", dt).over(self.queue, rows if cols else 0, *z_arg, *b_arg, *a_arg, _L(cols))
        return a

    def prime(self, act, z, work=None):
        z_arg = self._arg("prime", "z", z)
        dt = self._float("prime", "z", z)
        if act.elementwise:
            self._act(act, "prime", dt).over(self.queue, z.size, *z_arg, dt.type(act.param))
        else:
            rows, cols = self._matrix("prime", "z", z)
            self._act(act, "prime", dt).over(self.queue, rows if cols else 0, *z_arg, _L(cols))
        return z

    def _sum_delta(self, z, db):
        """∇b after a delta pass, when asked for (its own kernel here). Returns z."""
        if db is not None:
            self.sum_rows(z, db)
        return z

    def delta(self, act, z, a, work=None, db=None):
        z_arg = self._arg("delta", "z", z)
        dt = self._float("delta", "z", z)
        a_arg = self._arg("delta", "a", a, dt)
        self._same_size("delta", z=z, a=a)
        if act.elementwise:
            self._act(act, "delta", dt).over(self.queue, z.size, *z_arg, *a_arg, dt.type(act.param))
        else:
            rows, cols = self._matrix("delta", "z", z)
            self._act(act, "delta", dt).over(self.queue, rows if cols else 0, *z_arg, *a_arg, _L(cols))
        return self._sum_delta(z, db)

    # -- costs and metrics ------------------------------------------------------------------------
    def _cost(self, cost, name: str, dt) -> _Kernel:
        if not cost.c_loss or not cost.c_grad:
            raise DensennError(f"cost {cost.name!r} has no C expressions (c_loss, c_grad) to compile")
        return self._kernel("cost", dt, name, (cost.c_loss, cost.c_grad, cost.name))

    def cost_value(self, cost, a, y, work, acc):
        """acc[0] += Σ C(a, y), reduced on the device (``work`` is not needed)."""
        a_arg = self._arg("cost_value", "a", a)
        dt = self._float("cost_value", "a", a)
        y_arg = self._arg("cost_value", "y", y, dt)
        acc_arg = self._acc("cost_value", acc, dt)
        self._same_size("cost_value", a=a, y=y)
        self._cost(cost, "cost_value", dt).one_group(self.queue, dt.itemsize, a.size, *a_arg, *y_arg,
                                                      *acc_arg, dt.type(cost.eps(dt)))
        return acc

    def cost_gradient(self, cost, a, y, out, scale, work):
        a_arg = self._arg("cost_gradient", "a", a)
        dt = self._float("cost_gradient", "a", a)
        y_arg = self._arg("cost_gradient", "y", y, dt)
        out_arg = self._arg("cost_gradient", "out", out, dt)
        self._same_size("cost_gradient", a=a, y=y, out=out)
        self._cost(cost, "cost_gradient", dt).over(self.queue, a.size, *a_arg, *y_arg, *out_arg,
                                                   dt.type(scale), dt.type(cost.eps(dt)))
        return out

    def diff(self, a, y, out, scale):
        a_arg = self._arg("diff", "a", a)
        dt = self._float("diff", "a", a)
        y_arg = self._arg("diff", "y", y, dt)
        out_arg = self._arg("diff", "out", out, dt)
        self._same_size("diff", a=a, y=y, out=out)
        self._kernel("base", dt, "diff").over(self.queue, a.size, *a_arg, *y_arg, *out_arg, dt.type(scale))
        return out

    def count_correct(self, a, labels, work, acc):
        """acc[0] += #rows whose prediction equals the label, reduced on the device (``work`` unused)."""
        a_arg = self._arg("count_correct", "a", a)
        dt = self._float("count_correct", "a", a)
        l_arg = self._arg("count_correct", "labels", labels)
        acc_arg = self._acc("count_correct", acc, dt)
        rows, cols = self._matrix("count_correct", "a", a)
        if labels.ndim != 1 or labels.shape[0] != rows or labels.dtype.kind not in "iu":
            raise DensennError(f"count_correct: labels must be {rows} integers, got {labels.dtype} "
                               f"{tuple(labels.shape)}")
        if cols == 0:
            return acc
        self._kernel("count", dt, "count_correct", labels.dtype).one_group(
            self.queue, dt.itemsize, rows, *a_arg, *l_arg, *acc_arg, _L(cols))
        return acc

    # -- optimizers -------------------------------------------------------------------------------
    def sgd_update(self, w, g, v, lr, momentum, nesterov, weight_decay):
        w_arg = self._arg("sgd_update", "w", w)
        dt = self._float("sgd_update", "w", w)
        g_arg = self._arg("sgd_update", "g", g, dt)
        t = dt.type
        if v is None:
            self._same_size("sgd_update", w=w, g=g)
            self._kernel("base", dt, "sgd").over(self.queue, w.size, *w_arg, *g_arg, t(lr), t(weight_decay))
            return w
        v_arg = self._arg("sgd_update", "v", v, dt)
        self._same_size("sgd_update", w=w, g=g, v=v)
        self._kernel("base", dt, "sgd_momentum").over(self.queue, w.size, *w_arg, *g_arg, *v_arg, t(lr),
                                                      t(momentum), np.int32(bool(nesterov)), t(weight_decay))
        return w

    def adam_update(self, w, g, m, v, step, eps, beta1, beta2, weight_decay, decay, work):
        """One Adam step in one kernel (``work`` is not needed)."""
        w_arg = self._arg("adam_update", "w", w)
        dt = self._float("adam_update", "w", w)
        g_arg = self._arg("adam_update", "g", g, dt)
        m_arg = self._arg("adam_update", "m", m, dt)
        v_arg = self._arg("adam_update", "v", v, dt)
        self._same_size("adam_update", w=w, g=g, m=m, v=v)
        t = dt.type
        self._kernel("base", dt, "adam").over(self.queue, w.size, *w_arg, *g_arg, *m_arg, *v_arg, t(step),
                                              t(eps), t(beta1), t(beta2), t(weight_decay), t(1.0 - decay))
        return w


__all__ = ["OpenCLEngine", "create_engine", "list_devices", "describe", "DeviceList"]
