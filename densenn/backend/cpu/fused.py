"""The CPU engine's Numba kernels, made from the declared operations.

NumPy runs each elementwise step as its own pass over memory: the Adam update is a
dozen passes, bias + ReLU two, the ReLU backward two. A ``Map``'s body becomes one loop
that does it in one pass, compiled lazily, per operation and dtype, the first time it
runs. They are an optimisation only: ``CPUEngine(fused=False)`` (engine name
``"cpu:numpy"``) runs every operation's NumPy form, and the tests compare the two.

Two shapes of loop: *flat* over the elements of contiguous arrays (an optimizer update,
an activation without bias), and *rows × columns* where a ``col`` array (a bias) is read
by column or the column sums of the result are wanted (∇b in the delta pass).

The scalars reach a flat kernel in one vector ``coef`` of the arrays' dtype: converting a
handful of Python floats to NumPy scalars for every call cost more than a bias's whole
update. Inside, numbers are ``_T(·)``, the dtype's own scalar type, so float32 stays
float32 (see :mod:`densenn.kernels.expr`).
"""
from __future__ import annotations

import math
import os

import numpy as np

from densenn.kernels import expr
from densenn.kernels.random import python_fill

try:
    import numba
except ImportError:  # the pure NumPy path needs nothing more
    numba = None

AVAILABLE = numba is not None

_cache: dict = {}


def njit(fn):
    # error_model="numpy": no ZeroDivisionError checks, which would block SIMD in the loops
    return numba.njit(cache=False, nogil=True, boundscheck=False, error_model="numpy")(fn)


def njit_reassociating(fn):
    """``njit`` that may reorder sums (LLVM's reassoc and contract flags, not the NaN- or
    inf-ignoring ones): a row's sum then runs in SIMD lanes instead of one add at a time."""
    return numba.njit(cache=False, nogil=True, boundscheck=False, error_model="numpy",
                      fastmath={"reassoc", "contract"})(fn)


def _compile(name: str, source: str, dtype) -> object:
    namespace = {"np": np, "math": math, "_T": np.dtype(dtype).type}
    exec(compile(source, f"<densenn kernel {name}>", "exec"), namespace)   # noqa: S102 (our own text)
    return namespace[name]


def _unpack(op, indent: str) -> str:
    # ``scalar`` arrays are read once, before the loop: a load inside it that might alias
    # the stores would keep LLVM from vectorising
    return ("".join(f"{indent}{s} = coef[{k}]\n" for k, s in enumerate(op.scalars))
            + "".join(f"{indent}{n} = p_{n}[0]\n" for n, r in op.arrays if r == "scalar"))


def flat_source(op, name: str) -> str:
    """A loop over the elements of 1-D arrays (every array of ``op`` is per element, but
    the one-element ``scalar`` ones)."""
    body = op.parsed_cpu
    args = ", ".join(f"p_{n}" for n in op.array_names)
    first = [n for n, r in op.arrays if r != "scalar"][0]
    loads = "".join(f"        {n} = p_{n}[i]\n" for n, r in op.arrays if n in body.read and r != "scalar")
    stores = "".join(f"        p_{n}[i] = {n}\n" for n in op.writes)
    return (f"def {name}({args}, coef, db):\n" + _unpack(op, "    ")
            + f"    for i in range(p_{first}.shape[0]):\n" + loads + expr.to_python(body, "        ") + "\n"
            + stores)


#: where a rows × columns loop reads an array of a role (the default: at the element, i, j)
_AT = {"col": "j", "row": "i"}


def rows_source(op, name: str, sums: bool) -> str:
    """A rows × columns loop: ``col`` arrays read at the column, ``row`` ones at the row, and
    the column sums of the first written array added into ``db`` when it is as wide as a row
    (an empty db: none)."""
    body = op.parsed_cpu
    args = ", ".join(f"p_{n}" for n in op.array_names)
    first = op.elements[0]
    loads = "".join(f"            {n} = p_{n}[{_AT.get(r, 'i, j')}]\n" for n, r in op.arrays
                    if n in body.read and r != "scalar")
    stores = "".join(f"            p_{n}[i, j] = {n}\n" for n in op.writes)
    out = op.writes[0]
    return (f"def {name}({args}, coef, db):\n" + _unpack(op, "    ")
            + f"    n, m = p_{first}.shape\n    sums = db.shape[0] == m\n"
            + "    for i in range(n):\n        for j in range(m):\n" + loads
            + expr.to_python(body, "            ") + "\n" + stores
            + (f"            if sums:\n                db[j] += {out}\n" if sums else ""))


def python_kernel(op, dtype, layout: str):
    """Map ``op``'s loop for ``dtype`` as a plain Python function (what Numba compiles);
    ``layout`` "flat", "rows" or "sums" (rows that also add the column sums into db)."""
    name = f"_{layout}_kernel"
    source = flat_source(op, name) if layout == "flat" else rows_source(op, name, layout == "sums")
    return _compile(name, source, dtype)


def map_kernel(op, dtype, layout: str):
    """The Numba kernel of Map ``op`` for ``dtype`` (see python_kernel), compiled once."""
    key = (op, np.dtype(dtype), layout)
    if key not in _cache:
        _cache[key] = njit(python_kernel(op, dtype, layout))
    return _cache[key]


def uniform_kernel():
    """The Numba form of the engine's uniform draw (densenn.kernels.random), compiled once."""
    if "uniform" not in _cache:
        _cache["uniform"] = njit(python_fill)
    return _cache["uniform"]


def row_kernel(op):
    """The Numba kernel of RowMap ``op`` (its ``numba`` builder, given ``njit``)."""
    if op not in _cache:
        compile_ = njit_reassociating if op.reassociate else njit
        _cache[op] = compile_(op.numba(compile_))
    return _cache[op]


#: flat maps with fewer elements than this run on one thread
OMP_MIN = 1 << 16


def omp_kernel(op, dtype):
    """Map ``op``'s flat kernel over blocks of its arrays on Numba's OpenMP threads, or None
    where Numba's threading layer is not (or cannot be) OpenMP.

    For MKL running on GNU OpenMP: both then draw on libgomp's one pool of threads, which
    are still awake after the ∇w GEMM that precedes every update. Threads of our own
    (``threads.py``) would meet those spinning threads and lose the core to them: splitting
    MNIST's first-layer Adam that way made the step slower, through OpenMP it made it 4%
    faster. Chooses Numba's "omp" layer unless the user chose another
    (``$NUMBA_THREADING_LAYER``) or Numba's threads already run on another.
    """
    if not _omp_works():
        return None
    key = (op, np.dtype(dtype), "omp")
    if key not in _cache:
        inner = map_kernel(op, dtype, "flat")
        args = ", ".join(f"p_{n}" for n in op.array_names)
        sliced = ", ".join(f"p_{n}" if r == "scalar" else f"p_{n}[lo:hi]" for n, r in op.arrays)
        first = [n for n, r in op.arrays if r != "scalar"][0]
        source = (f"def _blocks({args}, coef, db):\n"
                  f"    n, parts = p_{first}.shape[0], numba.get_num_threads()\n"
                  "    for k in numba.prange(parts):\n"
                  "        lo, hi = n * k // parts, n * (k + 1) // parts\n"
                  f"        inner({sliced}, coef, db)\n")
        namespace = {"numba": numba, "inner": inner}
        exec(compile(source, f"<densenn kernel {op.name} omp>", "exec"), namespace)   # noqa: S102
        _cache[key] = numba.njit(parallel=True, nogil=True, cache=False, error_model="numpy")(namespace["_blocks"])
    return _cache[key]


def _omp_works() -> bool:
    if "omp" not in _cache:
        _cache["omp"] = _probe_omp()
        if _cache["omp"] and hasattr(os, "register_at_fork"):
            # GNU OpenMP cannot start threads in a forked child (it waits for the parent's):
            # children run on one thread
            os.register_at_fork(after_in_child=lambda: _cache.__setitem__("omp", False))
    return _cache["omp"]


def _probe_omp() -> bool:
    if not AVAILABLE or numba.config.THREADING_LAYER not in ("default", "omp"):
        return False
    numba.config.THREADING_LAYER = "omp"    # read at Numba's first parallel launch only

    def probe(x):
        for k in numba.prange(x.shape[0]):
            x[k] += 1.0

    try:
        numba.njit(parallel=True, cache=False)(probe)(np.ones(4))     # launches the threads
        return numba.threading_layer() == "omp"
    except (ValueError, ImportError, OSError):      # no OpenMP layer loads here
        return False
