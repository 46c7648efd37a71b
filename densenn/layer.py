"""Dense layers: the inference form and the training form built from it.

Shapes (NumPy, row-major): a batch is ``x`` of shape ``(n, n_in)``, the weights
``w`` are ``(n_out, n_in)`` and ``b`` is ``(n_out,)``. The seed writes the same
thing column-major, one sample per column; the equations map one to one:

=========================  ==============================  ===========================
seed (column-major)        here (row-major)                 code
=========================  ==============================  ===========================
z = w·x + b                z = x·wᵀ + b                     ``gemm(1, x, w, 0, z, trans_b=True)``, ``bias_activ``
a = σ(z)                   a = σ(z)                         ``activ_fn.activ`` (inside ``bias_activ``)
δ = σ'(z) ∘ a              δ = σ'(z) ∘ a   (into z)         ``activ_fn.delta(z, a)``
∇w = δ·xᵀ                  ∇w = δᵀ·x                        ``gemm(1, z, x, 0, dw, trans_a=True)``
∇b = δ·1                   ∇b = Σ_rows δ                    ``sum_rows(z, db)``
signal = wᵀ·δ  (into a-1)  signal = δ·w  (into x)           ``gemm(1, z, w, 0, x)``
=========================  ==============================  ===========================

The seed subtracts its bias (``rk! -1.0 b ones``); densenn adds it, the common
convention. Negate ``b`` to reproduce the seed's numbers.
"""
from __future__ import annotations

import copy

from densenn.activation import ActivationFn, get_activation
from densenn.errors import DensennError, check_positive_int


class DenseInference:
    """The seed's ``FullyConnectedInference``: owns ``w`` and ``b``, any batch size.

    ``w`` is ``(n_out, n_in)``, ``b`` is ``(n_out,)``, both engine arrays.
    """

    def __init__(self, engine, n_in: int, n_out: int, activation, dtype, w=None, b=None):
        self.engine = engine
        self.n_in = check_positive_int("n_in", n_in)
        self.n_out = check_positive_int("units", n_out)
        self.activation = get_activation(activation)
        self.dtype = dtype
        self.w = engine.zeros((n_out, n_in), dtype) if w is None else w
        self.b = engine.zeros((n_out,), dtype) if b is None else b

    def __call__(self, x, z=None, a=None):
        """a = f(x·wᵀ + b) for any number of rows in ``x``; returns ``a``.

        ``z`` and ``a`` (shape ``(len(x), n_out)``) are allocated when not given
        (inference may allocate; training layers never do).
        """
        n = x.shape[0]
        z = self.engine.empty((n, self.n_out), self.dtype) if z is None else z
        a = self.engine.empty((n, self.n_out), self.dtype) if a is None else a
        self.engine.gemm(1.0, x, self.w, 0.0, z, trans_b=True)
        work = ActivationFn.for_layer(self.activation, self.engine, n, self.n_out, self.dtype)
        self.engine.bias_activ(self.activation, z, self.b, a, work.work)
        work.release()
        return a

    def nbytes(self) -> int:
        return sum(self.engine.nbytes(buf) for buf in (self.w, self.b) if buf is not None)

    def release(self):
        for name in ("w", "b"):
            buf = getattr(self, name)
            if buf is not None:
                self.engine.release(buf)
                setattr(self, name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return f"DenseInference({self.n_in}→{self.n_out}, {self.activation.name})"


class DenseTraining:
    """The seed's ``FullyConnectedTraining``: a fixed batch, shared ``w``/``b``, own buffers.

    ``x`` is the input buffer: the network's batch for the first layer, the
    previous layer's ``a`` otherwise. The layer owns ``z`` and ``a`` (``(batch,
    n_out)``), the gradients ``dw``, ``db``, and its activation's working memory;
    with ``gradients=False`` it has no ``dw`` (for plain SGD, whose update is
    folded into the ∇w GEMM: see ``backward``).
    """

    def __init__(self, inference: DenseInference, x, batch: int | None = None, gradients: bool = True):
        engine = inference.engine
        batch = x.shape[0] if batch is None else check_positive_int("batch_size", batch)
        if tuple(x.shape) != (batch, inference.n_in):
            raise DensennError(f"layer input must have shape ({batch}, {inference.n_in}), got {tuple(x.shape)}")
        self.engine = engine
        self.inference = inference
        self.w, self.b = inference.w, inference.b     # shared, not copied
        self.x = x
        self.batch = batch
        dtype = inference.dtype
        self.z = engine.empty((batch, inference.n_out), dtype)
        self.a = engine.empty((batch, inference.n_out), dtype)
        # no ∇w buffer for a layer whose updates are folded into its GEMM (plain SGD)
        self.dw = engine.zeros(inference.w.shape, dtype) if gradients else None
        self.db = engine.zeros(inference.b.shape, dtype)
        self.activ_fn = ActivationFn.for_layer(inference.activation, engine, batch, inference.n_out, dtype)
        self._owner = True

    @classmethod
    def after(cls, inference: DenseInference, previous: "DenseTraining", gradients: bool = True) -> "DenseTraining":
        """The layer that reads ``previous.a`` (the seed's two-argument ``training-layer``)."""
        return cls(inference, previous.a, previous.batch, gradients)

    # -- the two passes ------------------------------------------------------
    def forward(self):
        """z = x·wᵀ + b; a = f(z). Overwrites z and a."""
        self.forward_linear()
        self.engine.bias_activ(self.activ_fn.spec, self.z, self.b, self.a, self.activ_fn.work)
        return self.a

    def forward_linear(self):
        """z = x·wᵀ only: bias and activation are left to a fused output kernel. Overwrites z."""
        return self.engine.gemm(1.0, self.x, self.w, 0.0, self.z, trans_b=True)

    def backward(self, propagate: bool = True, delta_ready: bool = False, db_ready: bool = False,
                 update=None, signal=None, grad=None):
        """Gradients from the signal in ``a`` (∂C/∂a, written there by the layer above or the cost).

        Overwrites ``z`` with delta = f'(z) ∘ a (skipped when ``delta_ready``:
        the cost already wrote delta into z), ``dw`` = deltaᵀ·x, ``db`` = Σ delta
        (skipped when ``db_ready``: the output kernel summed it on the way),
        and, when ``propagate``, ``x`` with delta·w: the signal for the layer below
        (the first layer's input is the user's batch and is not written).

        ``update=(alpha, beta)`` folds a plain SGD step into the ∇w GEMM:
        w ← beta·w + alpha·deltaᵀ·x and b ← b + alpha·db, in place, with no ∇w
        written and no separate update pass over w (``dw`` is left alone). The
        update reads x and the signal needs the old w, so the signal goes into
        ``signal`` (scratch of x's shape) instead of x, and the layer below reads
        it from there: its ``grad`` (∂C/∂a when not in ``a``; may be overwritten).
        """
        e = self.engine
        if not delta_ready:     # ∇b = Σ delta comes out of the same pass where the engine can
            self.activ_fn.delta(self.z, self.a if grad is None else grad, None if db_ready else self.db)
        elif not db_ready:
            e.sum_rows(self.z, self.db)
        if update is None:
            if self.dw is None:
                raise DensennError("this training layer keeps no ∇w (it was made for folded SGD updates); "
                                   "make it with gradients=True")
            e.gemm(1.0, self.z, self.x, 0.0, self.dw, trans_a=True)
            if propagate:
                e.gemm(1.0, self.z, self.w, 0.0, self.x)
            return
        alpha, beta = update
        if propagate:
            if signal is None or tuple(signal.shape) != tuple(self.x.shape):
                raise DensennError(f"a folded update that propagates needs signal scratch of shape "
                                   f"{tuple(self.x.shape)}, got {None if signal is None else tuple(signal.shape)}")
            e.gemm(1.0, self.z, self.w, 0.0, signal)
        e.gemm(alpha, self.z, self.x, beta, self.w, trans_a=True)
        e.axpy(alpha, self.db, self.b)

    # -- partial batches --------------------------------------------------------
    def rows(self, n: int) -> "DenseTraining":
        """A view of this layer working on the first ``n`` samples of the batch.

        Shares every buffer (so nothing is allocated per step); used for the
        last, smaller batch of an epoch. Releasing a view releases nothing.
        """
        if not 0 < n <= self.batch:
            raise DensennError(f"rows must be in 1..{self.batch}, got {n}")
        view = copy.copy(self)
        view.x, view.z, view.a = self.x[:n], self.z[:n], self.a[:n]
        view.activ_fn = self.activ_fn.rows(n)
        view.batch = n
        view._owner = False
        return view

    # -- memory ------------------------------------------------------------------
    def nbytes(self) -> dict:
        e = self.engine

        def size(*bufs):        # a released layer owns nothing
            return sum(e.nbytes(buf) for buf in bufs if buf is not None)

        return {"activations": size(self.z, self.a), "gradients": size(self.dw, self.db),
                "work": self.activ_fn.nbytes()}

    def release(self):
        """Release what this layer owns (z, a, dw, db, activation work); w, b stay with the inference layer."""
        if not self._owner:
            return
        for name in ("z", "a", "dw", "db"):
            buf = getattr(self, name)
            if buf is not None:
                self.engine.release(buf)
                setattr(self, name, None)
        self.activ_fn.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return f"DenseTraining({self.inference.n_in}→{self.inference.n_out}, batch={self.batch})"
