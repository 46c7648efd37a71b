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

import numpy as np

from densenn.backend.base import serialize
from densenn.backend.opencl.devices import (
    DEVICE_ENV,
    DeviceList,
    _has_fp64,
    _pick_device,
    _unavailable_reason,
    cl,
    cla,
    describe,
    list_devices,
    pyclblast,
)
from densenn.config import setting
from densenn.errors import DensennError, EngineUnavailable
from densenn.kernels import gpu
from densenn.kernels.ops import RowMap

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_L = np.int64            # every size and offset crosses into the kernels as a C long

#: NumPy dtype -> OpenCL C type, for the kernels that move data of any type
_CTYPES = {np.dtype(k): v for k, v in {
    np.float32: "float", np.float64: "double", np.int8: "char", np.uint8: "uchar",
    np.int16: "short", np.uint16: "ushort", np.int32: "int", np.uint32: "uint",
    np.int64: "long", np.uint64: "ulong", np.bool_: "uchar"}.items()}

GROUP = 256              # work-items per group, capped by what the device allows per kernel



def create_engine(arg: str = "") -> OpenCLEngine:
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
        env = setting(DEVICE_ENV) or ""
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
    def _program(self, key, source: str, what: str, names):
        """Compile ``source`` once (per engine, i.e. per OpenCL context) and cache its kernels."""
        try:
            program = cl.Program(self.context, source).build()
        except cl.Error as exc:
            raise DensennError(f"OpenCL could not compile the kernels for {what} on {self.device_name}: "
                               f"{exc}") from None
        for name in names:
            self._kernels[key + (name,)] = _Kernel(program, name, self.device)

    def _kernel(self, dt: np.dtype, name: str, op=None, ltype=None, take=None) -> _Kernel:
        """Kernel ``name`` for float dtype ``dt``: of the declared ``op``, of the row gather
        (``take``: the data and index dtypes), or of the engine's own BASE kernels."""
        key = (_CTYPES[dt], op, ltype, take)
        try:
            return self._kernels[key + (name,)]
        except KeyError:
            pass
        if take is not None:
            source = gpu.program("opencl", _CTYPES[dt], take=(_CTYPES[take[0]], _CTYPES[take[1]]))
            self._program(key, source, "take_rows", ("take_rows",))
        elif op is not None:
            source = gpu.program("opencl", _CTYPES[dt], op, ltype=_CTYPES[ltype] if ltype is not None else "int")
            self._program(key, source, f"operation {op.name!r}", (op.name,))
        else:
            self._program(key, gpu.program("opencl", _CTYPES[dt]), "the basic operations", gpu.BASE_NAMES)
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
        self._kernel(dt, "add_bias").over(self.queue, z.size, *z_arg, *b_arg, _L(cols))
        return z

    def sum_rows(self, x, out):
        x_arg = self._arg("sum_rows", "x", x)
        dt = self._float("sum_rows", "x", x)
        out_arg = self._arg("sum_rows", "out", out, dt)
        rows, cols = self._matrix("sum_rows", "x", x)
        if out.size != cols:
            raise DensennError(f"sum_rows: out must have {cols} elements, got shape {tuple(out.shape)}")
        self._kernel(dt, "sum_rows").over(self.queue, cols, *x_arg, *out_arg, _L(rows))
        return out

    def axpy(self, alpha, x, y):
        x_arg = self._arg("axpy", "x", x)
        dt = self._float("axpy", "x", x)
        y_arg = self._arg("axpy", "y", y, dt)
        self._same_size("axpy", x=x, y=y)
        self._kernel(dt, "axpy").over(self.queue, y.size, dt.type(alpha), *x_arg, *y_arg)
        return y

    def scal(self, alpha, x):
        x_arg = self._arg("scal", "x", x)
        dt = self._float("scal", "x", x)
        self._kernel(dt, "scal").over(self.queue, x.size, dt.type(alpha), *x_arg)
        return x

    def uniform(self, out, key: int):
        """out = u(key, i) over its flat index (see densenn.kernels.random). Overwrites out."""
        out_arg = self._arg("uniform", "out", out)
        dt = self._float("uniform", "out", out)
        self._kernel(dt, "uniform").over(self.queue, out.size, *out_arg, np.uint32(key))
        return out

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
        self._kernel(_F32, "take_rows", take=(src.dtype, idx.dtype)).over(
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

    # -- declared operations (see densenn.kernels.ops) -------------------------------------
    def can(self, op) -> bool:
        """Whether this engine runs ``op`` (every Map and Sum; a RowMap with a C body)."""
        return gpu.can(op)

    def _op_args(self, op, arrays, scalars):
        """The kernel arguments of ``op``'s arrays and scalars, checked; and its float dtype."""
        if len(arrays) != len(op.arrays) or len(scalars) != len(op.scalars):
            raise DensennError(f"{op.name}: takes arrays ({', '.join(op.array_names)}) and scalars "
                               f"({', '.join(op.scalars)}), got {len(arrays)} arrays and {len(scalars)} scalars")
        dt = self._float(op.name, op.arrays[0][0], arrays[0])
        args, ltype = [], None
        for (name, role), x in zip(op.arrays, arrays):
            if role == "index":
                args += self._arg(op.name, name, x)
                if x.dtype.kind not in "iu":
                    raise DensennError(f"{op.name}: {name} must be integers, got {x.dtype}")
                ltype = x.dtype
            else:
                args += self._arg(op.name, name, x, dt)
                if role == "scalar" and x.size != 1:
                    raise DensennError(f"{op.name}: {name} is a scalar array and must have 1 element, got shape "
                                       f"{tuple(x.shape)}")
        return args + [dt.type(v) for v in scalars], dt, ltype

    @staticmethod
    def _row_sizes(op, arrays, rows: int):
        # a kernel reads a row vector at every row: a shorter one would be read past its end
        for (name, role), x in zip(op.arrays, arrays):
            if role == "row" and x.size != rows:
                raise DensennError(f"{op.name}: {name} must have {rows} elements (one per row), got shape "
                                   f"{tuple(x.shape)}")

    def map(self, op, arrays, scalars=(), work=None, sums=None):
        """Run Map or RowMap ``op`` (one kernel; ``work`` is not needed); with ``sums``, also
        sums = Σ rows of the first written array (a second kernel)."""
        if not self.can(op):
            raise DensennError(f"engine {self.name!r} has no kernel for {op.name!r} (it declares no C body)")
        args, dt, ltype = self._op_args(op, arrays, scalars)
        first = arrays[op.array_names.index(op.writes[0])]
        rows, cols = (first.shape[0], first.shape[1]) if first.ndim == 2 else (first.size, 1)
        for (name, role), x in zip(op.arrays, arrays):
            if role == "col" and x.size != cols:
                raise DensennError(f"{op.name}: {name} must have {cols} elements (one per column), got shape "
                                   f"{tuple(x.shape)}")
            if role == "" and x.size != first.size:
                self._same_size(op.name, **{op.writes[0]: first, name: x})
        self._row_sizes(op, arrays, rows)
        n = rows if isinstance(op, RowMap) else first.size
        if cols:
            self._kernel(dt, op.name, op, ltype).over(self.queue, n, *args, _L(cols))
        if sums is not None:
            self.sum_rows(first, sums)

    def reduce(self, op, arrays, scalars, acc, work=None):
        """acc[0] += Σ of Sum ``op``'s terms, reduced on the device in one work-group."""
        args, dt, ltype = self._op_args(op, arrays, scalars)
        acc_arg = self._acc(op.name, acc, dt)
        a = arrays[0]
        rows, cols = (a.shape[0], a.shape[1]) if a.ndim == 2 else (a.size, 1)
        self._row_sizes(op, arrays, rows)
        if cols == 0:
            return acc
        kernel = self._kernel(dt, op.name, op, ltype)
        g = min(kernel.group, gpu.GROUP)
        kernel.kernel(self.queue, (g,), (g,), *args, *acc_arg, _L(cols), _L(rows if op.rows else a.size))
        return acc


__all__ = ["OpenCLEngine", "create_engine", "list_devices", "describe", "DeviceList"]
