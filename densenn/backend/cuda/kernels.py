"""The CUDA engine's kernels and its compiled-module cache: the declared operations
(``DeclaredOps``) and the level-1 operations (``SharedKernels``: add_bias, sum_rows, axpy,
scal, uniform), both mixed into CUDAEngine.

The declared operations and the shared kernels come from densenn.kernels.gpu; the column
sums here are CUDA's own, tiled: one thread per column, as the shared kernel does, would
leave most of a GPU idle for a 10-wide output layer.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from densenn.backend.cuda.devices import cupy
from densenn.errors import DensennError
from densenn.kernels import gpu
from densenn.kernels.ops import RowMap

_I = np.int64           # every size and offset crosses into the kernels as a 64-bit integer
BLOCK = 256             # threads per block of the elementwise and reduction kernels
WARP = 32
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
#: NumPy dtype char -> C type, for the kernels that move any dtype (take_rows, labels)
_CTYPES = {"f": "float", "d": "double", "b": "signed char", "B": "unsigned char", "h": "short",
           "H": "unsigned short", "i": "int", "I": "unsigned int", "l": "long long",
           "q": "long long", "L": "unsigned long long", "Q": "unsigned long long", "?": "bool"}

SUM_ROWS = r"""
/* out[g * m + j] = sum of x[i, j] over the rows i of chunk g = blockIdx.y.
   Block (32, 8) threads: x over columns (coalesced), y over rows. */
KERNEL sum_rows_tiled(const T* x, T* out, const I n_rows, const I m, const I ldx, const I chunk) {
    __shared__ T tile[8][33];
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

/* out[j] = sum over g < n_chunks of part[g * m + j]: the second pass of sum_rows_tiled. */
KERNEL sum_chunks(const T* part, T* out, const I n_chunks, const I m) {
    const I j = (I)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    T s = 0;
    for (I g = 0; g < n_chunks; ++g) s += part[g * m + j];
    out[j] = s;
}
"""

_MODULES: dict = {}   # program text -> cupy.RawModule (compiled on first use, once per process)


def _module(source: str):
    mod = _MODULES.get(source)
    if mod is None:
        mod = _MODULES[source] = cupy.RawModule(code=source)
    return mod


def sources() -> dict[str, str]:
    """CUDA's own programs, float and double (the NVRTC test compiles them with the shared ones)."""
    return {f"sum_rows_{ct}": gpu.prelude("cuda", ct) + SUM_ROWS for ct in ("float", "double")}


class DeclaredOps:
    """The CUDA engine's part of the protocol that runs declared operations (see
    densenn.kernels.ops): one kernel per operation, compiled from densenn.kernels.gpu's text.
    Mixed into CUDAEngine, whose ``_check``, ``_fn``, ``_launch``, ``_ctype``, ``_CTYPES``
    and ``sum_rows`` it uses."""

    # provided by CUDAEngine
    name: str
    launches: int
    _check: Any
    _fn: Any
    _launch: Any
    _ctype: Any
    sum_rows: Any

    # -- declared operations (see densenn.kernels.ops) -------------------------------------------
    def can(self, op) -> bool:
        """Whether this engine runs ``op`` (every Map and Sum; a RowMap with a C body)."""
        return gpu.can(op)

    def _op(self, op, arrays, scalars):
        """(kernel, arguments, rows, cols) of ``op`` on these arrays, checked."""
        if not self.can(op):
            raise DensennError(f"engine {self.name!r} has no kernel for {op.name!r} (it declares no C body)")
        if len(arrays) != len(op.arrays) or len(scalars) != len(op.scalars):
            raise DensennError(f"{op.name}: takes arrays ({', '.join(op.array_names)}) and scalars "
                               f"({', '.join(op.scalars)}), got {len(arrays)} arrays and {len(scalars)} scalars")
        self._check(*arrays)
        dt = arrays[0].dtype
        if dt not in _FLOATS:
            raise DensennError(f"{op.name}: needs float32 or float64 arrays, got {dt}")
        args, ltype = [], "int"
        for (name, role), x in zip(op.arrays, arrays):
            if not x._c_contiguous:
                raise DensennError(f"{op.name}: {name} must be C-contiguous, got strides {x.strides}")
            if role == "index":
                found = _CTYPES.get(x.dtype.char)
                if x.dtype.kind not in "iu" or found is None:
                    raise DensennError(f"{op.name}: {name} must be integers, got {x.dtype}")
                ltype = found
            elif x.dtype != dt:
                raise DensennError(f"{op.name}: {name} must be {dt}, got {x.dtype}")
            args += [x, _I(0)]
        first = arrays[op.array_names.index(op.writes[0])] if op.writes else arrays[0]
        rows, cols = (first.shape[0], first.shape[1]) if first.ndim == 2 else (first.size, 1)
        for (name, role), x in zip(op.arrays, arrays):
            expected = cols if role == "col" else (rows if role in ("index", "row") else first.size)
            if role == "scalar":
                expected = 1
            if x.size != expected:
                raise DensennError(f"{op.name}: {name} must have {expected} elements, got shape {x.shape}")
        fn = self._fn(gpu.program("cuda", self._ctype(dt), op, ltype=ltype), op.name)
        return fn, args + [dt.type(v) for v in scalars], rows, cols, first

    def map(self, op, arrays, scalars=(), work=None, sums=None):
        """Run Map or RowMap ``op`` (one kernel; ``work`` is not needed); with ``sums``, also
        sums = Σ rows of the first written array."""
        fn, args, rows, cols, first = self._op(op, arrays, scalars)
        n = rows if isinstance(op, RowMap) else first.size
        if n and cols:
            self._launch(fn, n, args + [_I(cols), _I(n)])
        if sums is not None:
            self.sum_rows(first, sums)

    def reduce(self, op, arrays, scalars, acc, work=None):
        """acc[0] += Σ of Sum ``op``'s terms, reduced on the device in one block."""
        fn, args, rows, cols, first = self._op(op, arrays, scalars)
        self._check(acc)
        if acc.size < 1 or acc.dtype != first.dtype or not acc._c_contiguous:
            raise DensennError(f"acc must be a contiguous {first.dtype} device array, got {acc.shape} {acc.dtype}")
        if cols and rows:
            fn((1,), (gpu.GROUP,), tuple(args + [acc, _I(0), _I(cols), _I(rows if op.rows else first.size)]))
            self.launches += 1
        return acc


class SharedKernels:
    """The CUDA engine's level-1 operations on its own kernels (densenn.kernels.gpu's BASE text
    and the tiled column sums above). Mixed into CUDAEngine, whose ``_check``, ``_fn``,
    ``_launch``, ``_ctype``, ``_matrix``, ``_buffer``, ``_sms`` and ``fill`` they use."""

    # provided by CUDAEngine
    launches: int
    _sms: int
    _check: Any
    _fn: Any
    _launch: Any
    _ctype: Any
    _matrix: Any
    _buffer: Any
    fill: Any

    def _base(self, dt, name: str, n: int, args):
        """One of the shared BASE kernels (add_bias, axpy, scal, uniform) over n elements."""
        self._launch(self._fn(gpu.program("cuda", self._ctype(dt)), name), n, args)

    def add_bias(self, z, b):
        self._contiguous("add_bias", z, b)
        rows, cols = z.shape if z.ndim == 2 else (1, z.size)
        if b.size != cols or b.dtype != z.dtype:
            raise DensennError(f"add_bias: b must be {cols} {z.dtype}, got {b.shape} {b.dtype}")
        self._base(z.dtype, "add_bias", z.size, (z, _I(0), b, _I(0), _I(cols), _I(z.size)))
        return z

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
        source = gpu.prelude("cuda", ct) + SUM_ROWS
        target = out if chunks == 1 else self._buffer("sum_rows", x.dtype, chunks * m)
        self._fn(source, "sum_rows_tiled")((col_blocks, chunks), (WARP, 8),
                                           (x, target, _I(rows), _I(m), _I(ldx), _I(chunk)))
        self.launches += 1
        if chunks > 1:
            self._fn(source, "sum_chunks")(((m + BLOCK - 1) // BLOCK,), (BLOCK,), (target, out, _I(chunks), _I(m)))
            self.launches += 1
        return out

    def axpy(self, alpha, x, y):
        self._contiguous("axpy", x, y)
        if x.size != y.size or x.dtype != y.dtype:
            raise DensennError(f"axpy: x and y must match, got {x.shape} {x.dtype} and {y.shape} {y.dtype}")
        self._base(y.dtype, "axpy", y.size, (y.dtype.type(alpha), x, _I(0), y, _I(0), _I(y.size)))
        return y

    def scal(self, alpha, x):
        self._contiguous("scal", x)
        self._base(x.dtype, "scal", x.size, (x.dtype.type(alpha), x, _I(0), _I(x.size)))
        return x

    def uniform(self, out, key: int):
        """out = u(key, i) over its flat index (see densenn.kernels.random). Overwrites out."""
        self._contiguous("uniform", out)
        self._base(out.dtype, "uniform", out.size, (out, _I(0), np.uint32(key), _I(out.size)))
        return out

    def _contiguous(self, op: str, *arrays):
        self._check(*arrays)
        for x in arrays:
            if not x._c_contiguous:
                raise DensennError(f"{op}: arrays must be C-contiguous (a row view x[a:b] is; a column slice "
                                   f"is not), got strides {x.strides}")
            if x.dtype not in _FLOATS:
                raise DensennError(f"{op}: needs float32 or float64 arrays, got {x.dtype}")
