"""The engine protocol: the few operations a layer needs, on any device.

An engine owns arrays on its device and the kernels that work on them. Layers,
costs and optimizers call only these methods, so the network code is the same
on the CPU (NumPy + BLAS), OpenCL and CUDA.

Conventions (NumPy's ``out=`` style, after Neanderthal's ``mm!``/``axpy!``):

* every operation that writes takes the target as an argument, writes it in
  place, and returns it; nothing inside a training step allocates;
* matrices are 2-D, row-major ``(rows, cols)``; a batch is ``(n_samples,
  n_features)``, which is the seed's column-major ``features × samples`` matrix
  with no copy; ``arr[:n]`` (the first n samples) is a view on every engine;
* vectors are 1-D; scalar accumulators are 1-element vectors that stay on the
  device until ``to_host`` reads them.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Protocol, runtime_checkable

import numpy as np

from densenn.errors import DensennError

Array = Any  # an engine's array type: numpy.ndarray, pyopencl Array, cupy.ndarray


@runtime_checkable
class Engine(Protocol):
    """Operations every engine implements. ``name`` is how users ask for it."""

    name: str
    # Optional: ``index_dtype``, the integer dtype of labels and batch indices on
    # this engine (int32 when absent; the CPU engine uses NumPy's intp).

    # -- memory ------------------------------------------------------------
    def supports(self, dtype) -> bool:
        """Whether this engine computes in ``dtype`` (float32 always; float64 where the device can)."""

    def empty(self, shape, dtype) -> Array:
        """A new uninitialised array on the device."""

    def zeros(self, shape, dtype) -> Array:
        """A new zero-filled array on the device."""

    def to_engine(self, host: np.ndarray, dtype=None) -> Array:
        """A device copy of a host array (may share memory on the CPU engine)."""

    def upload(self, host: np.ndarray, out: Array) -> Array:
        """Copy a host array into the existing device array ``out``."""

    def to_host(self, x: Array) -> np.ndarray:
        """A NumPy copy of a device array (synchronises)."""

    def owns(self, x: Array) -> bool:
        """Whether ``x`` is an array of this engine (device/context included)."""

    def nbytes(self, x: Array) -> int:
        """Bytes of device memory behind ``x``."""

    def release(self, x: Array) -> None:
        """Give the memory behind ``x`` back now, not at garbage collection."""

    def synchronize(self) -> None:
        """Wait until all queued work on the device is done."""

    # -- BLAS-like ---------------------------------------------------------
    def gemm(self, alpha, a, b, beta, c, trans_a=False, trans_b=False) -> Array:
        """c = alpha · op(a) · op(b) + beta · c, op(x) = xᵀ when trans_x. Overwrites c."""

    def add_bias(self, z, b) -> Array:
        """z[i, :] += b for every row i (the seed's rank-1 update with a ones vector). Overwrites z."""

    def sum_rows(self, x, out) -> Array:
        """out[j] = Σ_i x[i, j] (∇b from delta). Overwrites out."""

    def axpy(self, alpha, x, y) -> Array:
        """y += alpha · x. Overwrites y."""

    def scal(self, alpha, x) -> Array:
        """x *= alpha. Overwrites x."""

    def copy(self, x, y) -> Array:
        """y = x. Overwrites y."""

    def fill(self, x, value) -> Array:
        """x[...] = value. Overwrites x."""

    def uniform(self, out, key: int) -> Array:
        """out = u(key, i) over out's flat index i (C-contiguous): uniform numbers in [0, 1)
        from a counter-based hash, bit-identical on every engine (densenn.kernels.random).
        Overwrites out."""

    def take_rows(self, src, idx, out) -> Array:
        """out = src[idx] (the rows of one shuffled batch). Overwrites out.

        ``idx`` is an int32 engine array (the training loop uploads a batch's
        indices once and gathers x, y and labels with them) or a host int array."""

    # -- declared operations (see densenn.kernels.ops) ---------------------
    # Activations, costs, optimizers and metrics declare their arithmetic as Map, RowMap
    # and Sum operations; an engine runs any of them and names none.
    def can(self, op) -> bool:
        """Whether this engine has a form of the declared operation ``op``."""

    def map(self, op, arrays, scalars=(), work=None, sums=None) -> None:
        """Run Map or RowMap ``op`` over ``arrays`` (in ``op.arrays`` order; those in
        ``op.writes`` are overwritten) with ``scalars``. ``work``: scratch for forms that
        need it (row-sliced with the arrays). With ``sums``: also sums = Σ rows of the
        first written array (overwritten; in the same pass where the engine can)."""

    def reduce(self, op, arrays, scalars, acc, work=None) -> Array:
        """acc[0] += Σ of Sum ``op``'s terms over ``arrays``; stays on the device."""


#: the protocol's operations by name, the optional fused output kernel included
OPERATIONS = tuple(name for name, value in vars(Engine).items() if callable(value) and not name.startswith("_"))


def serialize(engine, extra=(), context=None) -> None:
    """Make every operation of ``engine`` (and the methods named in ``extra``) run under one
    lock, ``engine.lock``, so that networks on this engine can be used from several threads.

    For the device engines: their kernel objects take their arguments and launch in two
    steps (PyOpenCL's ``Kernel.__call__`` sets the arguments on the shared kernel, then
    enqueues), and they keep per-engine scratch (index buffers, pending uploads). One
    operation at a time keeps each step whole; the queue is in order, so work queued by
    one thread never sees another's half-written arguments. The lock is reentrant:
    operations may call each other. ``context`` (a context manager, such as a CUDA device)
    is entered around every operation too.
    """
    lock = threading.RLock()
    engine.lock = lock
    for name in OPERATIONS + tuple(extra):
        method = getattr(engine, name, None)
        if method is None:
            continue

        @functools.wraps(method)
        def locked(*args, _method=method, **kwargs):
            with lock:
                if context is None:
                    return _method(*args, **kwargs)
                with context:
                    return _method(*args, **kwargs)

        setattr(engine, name, locked)


def check_dtype(engine, dtype) -> np.dtype:
    """The NumPy dtype for ``dtype``, or a DensennError if the engine can't compute in it."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DensennError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise DensennError(f"dtype must be 'float32' or 'float64', got {dt}")
    if not engine.supports(dt):
        raise DensennError(f"engine {engine.name!r} does not support {dt} on this device")
    return dt
