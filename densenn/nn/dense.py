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

from dataclasses import dataclass
from typing import Any

from densenn.errors import DensennError, check_choice, check_positive_int
from densenn.nn.activation import Activation, ActivationFn, get_activation
from densenn.nn.init import INITIALIZERS, default_init, init_weights
from densenn.nn.layer import LAYER_TYPES, Inference, Layer, TrainingLayer

_NORMS = {"batch": "batchnorm", "layer": "layernorm", None: None, "none": None}


@dataclass(frozen=True, eq=True)
class Dense(Layer):
    """A fully-connected layer: ``units`` outputs, an activation, an initialiser.

    ``init=None`` picks He for ReLU-like activations, LeCun for SELU and Glorot
    otherwise. ``norm="batch"`` or ``"layer"`` normalises the linear part before the
    activation: ``Dense(256, "relu", norm="batch")`` is the three layers
    ``Dense(256, "linear"), BatchNorm(), "relu"`` (the initialiser still chosen for relu).
    """

    units: int
    activation: str | Activation = "relu"
    init: str | None = None
    norm: str | None = None

    type = "dense"
    config_keys = (("units", "activation"), ("init",))

    def __post_init__(self):
        check_positive_int("units", self.units)
        get_activation(self.activation)
        if self.init is not None:
            check_choice("init", self.init, INITIALIZERS)
        if self.norm is not None:
            check_choice("norm", self.norm, ("batch", "layer", "none"))
            if self.norm == "none":
                object.__setattr__(self, "norm", None)

    def __eq__(self, other):
        # by what it builds: "relu" and ReLU() are the same activation
        return isinstance(other, Dense) and (self.config(), self.norm) == (other.config(), other.norm)

    def __hash__(self):
        return hash((self.units, get_activation(self.activation).name, self.init, self.norm))

    def config(self) -> dict:
        return {"units": int(self.units), "activation": get_activation(self.activation).config(),
                "init": self.init}

    @classmethod
    def from_config(cls, cfg: dict) -> Dense:
        return cls(cfg["units"], get_activation(cfg["activation"]), cfg.get("init"))

    def n_out(self, n_in: int) -> int:
        return self.units

    def short(self) -> str:
        return f"{self.units}{get_activation(self.activation).name[:4]}"

    def tensor_shapes(self, n_in: int) -> dict[str, tuple]:
        return {"w": (self.units, n_in), "b": (self.units,)}

    def expand(self) -> list[Layer]:
        norm = _NORMS[self.norm]
        if norm is None:
            return [self]
        act = get_activation(self.activation)
        linear = Dense(self.units, "linear", self.init or default_init(act.name))
        norm_layer: Any = LAYER_TYPES[norm]
        activation_layer: Any = LAYER_TYPES["activation"]
        return [linear, norm_layer(), activation_layer(act)]

    def build(self, engine, n_in, dtype, rng, seed, index):
        act = get_activation(self.activation)
        w = init_weights(n_in, self.units, self.init or default_init(act.name), rng)
        return DenseInference(engine, n_in, self.units, act, dtype, w=engine.to_engine(w, dtype),
                              b=engine.zeros((self.units,), dtype))


class DenseInference(Inference):
    """The seed's ``FullyConnectedInference``: owns ``w`` and ``b``, any batch size.

    ``w`` is ``(n_out, n_in)``, ``b`` is ``(n_out,)``, both engine arrays.
    """

    #: the layer's tensors in a model file (``layers.{i}.{name}``): its parameters, no other state
    param_names = ("w", "b")

    def __init__(self, engine, n_in: int, n_out: int, activation, dtype, w=None, b=None):
        super().__init__(engine, check_positive_int("n_in", n_in), dtype)
        self.n_out = check_positive_int("units", n_out)
        self.activation = get_activation(activation)
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
        self.activation.bias_activ(self.engine, z, self.b, a, work.work)
        work.release()
        return a

    def describe(self) -> str:
        return self.activation.name

    def training(self, x, batch: int, folded: bool = False) -> DenseTraining:
        """The training layer reading ``x`` (FoldedSGDDense when ``folded``)."""
        return (FoldedSGDDense if folded else DenseTraining)(self, x, batch)

    def __repr__(self):
        return f"DenseInference({self.n_in}→{self.n_out}, {self.activation.name})"


class DenseTraining(TrainingLayer):
    """The seed's ``FullyConnectedTraining``: a fixed batch, shared ``w``/``b``, own buffers.

    ``x`` is the input buffer: the network's batch for the first layer, the
    previous layer's ``a`` otherwise. The layer owns ``z`` and ``a`` (``(batch,
    n_out)``), the gradients ``dw``, ``db``, and its activation's working memory.

    The training-layer protocol, which the training network drives without knowing
    the layer's type: ``forward()``; ``backward(grad, propagate)`` (from ∂C/∂a in
    ``grad``, the gradients, and the signal for the layer below, whose buffer it
    returns); ``params``, ``grads`` and ``decays`` (which parameters weight decay
    applies to); ``rows(n)``; ``nbytes()``; ``release()``. An output layer also offers
    ``forward_linear()`` and ``backward_from_delta`` for a cost that writes ∂C/∂z itself.
    """

    activations = ("z", "a")
    gradients = ("dw", "db")
    #: weight decay applies to w, not to b
    decays = (True, False)

    def __init__(self, inference: DenseInference, x, batch: int | None = None):
        batch = x.shape[0] if batch is None else check_positive_int("batch_size", batch)
        super().__init__(inference, x, batch)
        engine = self.engine
        self.w, self.b = inference.w, inference.b     # shared, not copied
        dtype = inference.dtype
        self.z = engine.empty((batch, inference.n_out), dtype)
        # a linear layer's a is its z: no copy forward, no delta pass backward (∂C/∂a = ∂C/∂z)
        self.linear = inference.activation.name == "linear"
        self.a = self.z if self.linear else engine.empty((batch, inference.n_out), dtype)
        self.dw = self._gradient_buffer(engine, inference.w.shape, dtype)
        self.db = engine.zeros(inference.b.shape, dtype)
        self.activ_fn = ActivationFn.for_layer(inference.activation, engine, batch, inference.n_out, dtype)

    @staticmethod
    def _gradient_buffer(engine, shape, dtype):
        return engine.zeros(shape, dtype)

    @classmethod
    def after(cls, inference: DenseInference, previous: DenseTraining) -> DenseTraining:
        """The layer that reads ``previous.a`` (the seed's two-argument ``training-layer``)."""
        return cls(inference, previous.a, previous.batch)

    # -- the two passes ------------------------------------------------------
    def forward(self):
        """z = x·wᵀ + b; a = f(z). Overwrites z and a."""
        self.forward_linear()
        if self.linear:
            self.engine.add_bias(self.z, self.b)
        else:
            self.activ_fn.bias_activ(self.z, self.b, self.a)
        return self.a

    def forward_linear(self):
        """z = x·wᵀ only: bias and activation are left to a fused output kernel. Overwrites z."""
        return self.engine.gemm(1.0, self.x, self.w, 0.0, self.z, trans_b=True)

    def backward(self, grad=None, propagate: bool = True):
        """Gradients from ∂C/∂a in ``grad`` (default ``a``, where the layer above or the cost
        wrote it; may be overwritten). Overwrites ``z`` with delta = f'(z) ∘ grad, ``dw`` =
        deltaᵀ·x, ``db`` = Σ delta (in the delta's pass where the engine can) and, when
        ``propagate``, ``x`` with delta·w: the signal for the layer below (the first
        layer's input is the user's batch and is not written). Returns the signal's buffer."""
        if not self.linear:
            self.activ_fn.delta(self.z, self.a if grad is None else grad, self.db)
            return self._weights_and_signal(propagate)
        if grad is not None:        # a signal left elsewhere (folded SGD's scratch)
            self.engine.copy(grad, self.z)
        self.engine.sum_rows(self.z, self.db)
        return self._weights_and_signal(propagate)

    def backward_from_delta(self, propagate: bool = True, db_ready: bool = False):
        """``backward`` for an output layer whose cost already wrote delta = ∂C/∂z into z
        (and, with ``db_ready``, ∇b into db). Returns the signal's buffer."""
        if not db_ready:
            self.engine.sum_rows(self.z, self.db)
        return self._weights_and_signal(propagate)

    def _weights_and_signal(self, propagate):
        e = self.engine
        e.gemm(1.0, self.z, self.x, 0.0, self.dw, trans_a=True)
        if propagate:
            e.gemm(1.0, self.z, self.w, 0.0, self.x)
        return self.x

    def __repr__(self):
        return f"DenseTraining({self.inference.n_in}→{self.inference.n_out}, batch={self.batch})"


class FoldedSGDDense(DenseTraining):
    """Dense training for plain SGD, whose update folds into the ∇w GEMM (as Deep Diamond
    has a separate fully-connected type for SGD): w ← beta·w + alpha·deltaᵀ·x and
    b ← b + alpha·db in place, with no ∇w buffer and no separate update pass over w.

    ``update = (alpha, beta)`` is set by the training network before each backward pass.
    The update reads x and the signal needs the old w, so the signal goes into ``signal``
    (scratch of x's shape, set by the network) instead of x, and the layer below reads it
    from there as its ``grad``.
    """

    update = None
    signal = None

    @staticmethod
    def _gradient_buffer(engine, shape, dtype):
        return None

    @property
    def grads(self) -> tuple:
        raise DensennError("a folded-SGD layer keeps no ∇w: its update happens inside backward")

    def _weights_and_signal(self, propagate):
        e = self.engine
        if self.update is None:
            raise DensennError("this training layer keeps no ∇w (it folds plain SGD updates into its GEMM): "
                               "set its update (alpha, beta) before backward, or use DenseTraining")
        alpha, beta = self.update
        signal = None
        if propagate:
            signal = self.signal
            if signal is None or tuple(signal.shape) != tuple(self.x.shape):
                raise DensennError(f"a folded update that propagates needs signal scratch of shape "
                                   f"{tuple(self.x.shape)}, got {None if signal is None else tuple(signal.shape)}")
            e.gemm(1.0, self.z, self.w, 0.0, signal)
        e.gemm(alpha, self.z, self.x, beta, self.w, trans_a=True)
        e.axpy(alpha, self.db, self.b)
        return signal
