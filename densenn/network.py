"""Networks: a description (``Dense`` specs), the inference network, the training network.

``Network`` owns the inference layers (weights) on one engine and offers the
user API (``fit``, ``predict``, ``evaluate``, ``gradients``, weights, saving).
``TrainingNetwork`` is built from it for one batch size and one cost: it owns
the input/target buffers, the training layers (sharing the weights) and the
cost's scratch, and runs one allocation-free training step.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from densenn.activation import Activation, get_activation
from densenn.backend import check_dtype, get_engine
from densenn.cost import diff, get_cost
from densenn.errors import DensennError, check_choice, check_matrix, check_nonnegative_int, \
    check_positive_int, describe, is_real_number_dtype
from densenn.init import INITIALIZERS, default_init, init_weights
from densenn.layer import DenseInference, DenseTraining, FoldedSGDDense
from densenn.metrics import count_correct

#: host dtype of class labels (NumPy's index type)
LABEL_DTYPE = np.int64


def index_dtype(engine) -> np.dtype:
    """The integer dtype of labels and batch indices on ``engine`` (its ``index_dtype``, else int32).

    The CPU engine uses NumPy's intp, so ``take``/``argmax`` need no converted copy.
    """
    return np.dtype(getattr(engine, "index_dtype", np.int32))


@dataclass(frozen=True)
class Dense:
    """A fully-connected layer: ``units`` outputs, an activation, an initialiser.

    ``init=None`` picks He for ReLU-like activations and Glorot otherwise.
    """

    units: int
    activation: str | Activation = "relu"
    init: str | None = None

    def __post_init__(self):
        check_positive_int("units", self.units)
        get_activation(self.activation)
        if self.init is not None:
            check_choice("init", self.init, INITIALIZERS)

    def config(self) -> dict:
        return {"units": int(self.units), "activation": get_activation(self.activation).config(),
                "init": self.init}

    @classmethod
    def from_config(cls, cfg: dict) -> "Dense":
        return cls(cfg["units"], get_activation(cfg["activation"]), cfg.get("init"))


# -- targets --------------------------------------------------------------------------
def prepare_targets(y, n_samples: int, n_out: int, name: str = "y"):
    """Targets as a float ``(n, n_out)`` matrix, plus int class labels when y is a classification.

    Accepted: class indices ``(n,)`` (integers, or whole floats) in ``[0, n_out)``
    (for one output: 0/1); one-hot rows ``(n, n_out)``; or real targets
    ``(n, n_out)`` (regression; then labels is None). Returns ``(targets, labels)``.
    """
    try:
        arr = np.asarray(y)
    except Exception:
        raise DensennError(f"{name} must be a numeric array, got {describe(y)}") from None
    if not is_real_number_dtype(arr.dtype):
        raise DensennError(f"{name} must be numeric (class indices or targets), got dtype {arr.dtype}")
    if arr.shape[:1] != (n_samples,):
        raise DensennError(f"{name} must have {n_samples} rows (one per sample of x), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DensennError(f"{name} contains NaN or infinite values")
    if arr.ndim == 2 and arr.shape[1] == 1 and n_out == 1:
        arr = arr[:, 0]
    if arr.ndim == 1:
        if n_out > 1:
            if not np.issubdtype(arr.dtype, np.integer) and not (arr == np.round(arr)).all():
                raise DensennError(f"{name} as a 1-D array must hold class indices (integers), "
                                   f"got non-integer values such as {arr[arr != np.round(arr)][0]!r}")
            if arr.min() < 0 or arr.max() >= n_out:
                raise DensennError(f"{name} class indices must be in [0, {n_out - 1}] for {n_out} outputs, "
                                   f"got values in [{arr.min()}, {arr.max()}]")
            labels = arr.astype(LABEL_DTYPE)
            targets = np.zeros((n_samples, n_out))
            targets[np.arange(n_samples), labels] = 1.0
            return targets, labels
        targets = arr.astype(np.float64).reshape(-1, 1)
        binary = np.isin(arr, (0, 1)).all()
        return targets, (arr.astype(LABEL_DTYPE) if binary else None)
    if arr.ndim != 2 or arr.shape[1] != n_out:
        raise DensennError(f"{name} must be class indices of shape ({n_samples},) or targets of shape "
                           f"({n_samples}, {n_out}), got shape {arr.shape}")
    targets = arr.astype(np.float64)
    one_hot = np.isin(targets, (0.0, 1.0)).all() and (targets.sum(axis=1) == 1).all()
    return targets, (targets.argmax(axis=1).astype(LABEL_DTYPE) if one_hot else None)


# -- the training network ----------------------------------------------------------------
class TrainingNetwork:
    """Training layers for one batch size and cost, sharing ``net``'s weights.

    Owns: ``x`` (batch, n_in), ``y`` (batch, n_out), ``labels`` (batch,), the
    layers' ``z``/``a``/gradients/work, the cost's scratch, and ``acc`` = [Σ loss,
    Σ correct] accumulated on the engine until read.
    """

    def __init__(self, net: "Network", batch: int, cost, gradients: bool = True):
        # gradients=False: layers that fold plain SGD into their GEMMs (FoldedSGDDense)
        e = self.engine = net.engine
        self.net = net
        self.batch = check_positive_int("batch_size", batch)
        self.cost = get_cost(cost)
        dt = net.dtype
        self.x = e.empty((batch, net.n_in), dt)
        self.y = e.empty((batch, net.n_out), dt)
        self.labels = e.zeros((batch,), index_dtype(e))
        self.idx = e.zeros((batch,), index_dtype(e))
        self.cost_work = e.empty((batch, net.n_out), dt)
        self.metric_work = e.empty((batch,), index_dtype(e))
        self.acc = e.zeros((2,), dt)
        kind = DenseTraining if gradients else FoldedSGDDense
        self.folded = not gradients
        self.layers: list = []
        previous = None
        for inference in net.layers:
            layer = kind(inference, self.x, batch) if previous is None else kind.after(inference, previous)
            self.layers.append(layer)
            previous = layer
        last = net.layers[-1].activation.name
        # ∂C/∂z = a - y when the output activation is the cost's partner
        self.fused = self.cost.pairs_with == last
        # softmax + cross-entropy against class labels: one kernel where the engine has it
        self.head = self.fused and self.cost.fused_head is not None and e.can(self.cost.fused_head)
        self.params = [p for layer in self.layers for p in layer.params]
        self.grads = [] if self.folded else [g for layer in self.layers for g in layer.grads]
        self.decays = [d for layer in self.layers for d in layer.decays]
        self._views = {batch: self._buffers()}
        # scratch for the signals of a folded SGD step (see DenseTraining.backward), made at
        # the first such step: one flat buffer viewed per layer and batch size
        self.signal = None
        self._signal_views: dict = {}

    def _buffers(self, n: int | None = None):
        if n is None:
            return (self.layers, self.x, self.y, self.labels, self.cost_work, self.metric_work)
        return ([layer.rows(n) for layer in self.layers], self.x[:n], self.y[:n], self.labels[:n],
                self.cost_work[:n], self.metric_work[:n])

    def views(self, n: int):
        """The buffers for a batch of ``n <= batch`` rows (cached: made once per size)."""
        if n not in self._views:
            self._views[n] = self._buffers(n)
        return self._views[n]

    def load(self, xs, ys, labels, idx):
        """Gather the rows ``idx`` (host ints) of the engine arrays into the batch buffers. Returns n.

        The indices are uploaded once into ``self.idx`` and used for x, y and the
        labels alike: one host→engine transfer per batch. The one-hot rows of y
        are not gathered when the fused output kernel reads the labels instead.
        """
        n = len(idx)
        _, x, y, lab, _, _ = self.views(n)
        idx_e = self.idx[:n]
        self.engine.upload(idx, idx_e)
        self.engine.take_rows(xs, idx_e, x)
        if labels is None or not self.head:
            self.engine.take_rows(ys, idx_e, y)
        if labels is not None:
            self.engine.take_rows(labels, idx_e, lab)
        return n

    @property
    def gradients(self) -> bool:
        """Whether the layers keep ∇w buffers (not for folded SGD; see FoldedSGDDense)."""
        return not self.folded

    def signals(self, n: int) -> list:
        """Per layer, the (n, n_in) scratch its folded update writes its signal into (None for the first)."""
        if n not in self._signal_views:
            widths = [layer.inference.n_in for layer in self.layers[1:]]    # no signal below the first layer
            if self.signal is None and widths:
                self.signal = self.engine.empty((self.batch * max(widths),), self.net.dtype)
            self._signal_views[n] = [None] + [self.signal[:n * k].reshape(n, k) for k in widths]
        return self._signal_views[n]

    def forward_backward(self, n: int, with_labels: bool, update=None):
        """Forward, cost (accumulated into acc), backward for the first n rows of the batch.

        With ``update=(alpha, beta)`` the backward pass also applies a plain SGD step
        folded into the ∇w GEMMs (see ``DenseTraining.backward``)."""
        e = self.engine
        layers, _, y, labels, work, mwork = self.views(n)
        last = layers[-1]
        head = with_labels and self.head
        if head:
            for layer in layers[:-1]:
                layer.forward()
            last.forward_linear()
            e.map(self.cost.fused_head, (last.z, last.b, last.a, labels, self.acc), (1.0 / n, self.cost.eps(last.z.dtype)),
                  sums=last.db)
        else:
            for layer in layers:
                layer.forward()
            self.cost.value(e, last.a, y, work, self.acc[0:1])
            if with_labels:
                count_correct(e, last.a, labels, mwork, self.acc[1:2])
            if self.fused:
                diff(e, last.a, y, last.z, 1.0 / n)
            else:
                self.cost.gradient(e, last.a, y, last.a, 1.0 / n, work)
        if update is not None:
            # a folded update leaves each signal in scratch, where the layer below reads it; the
            # views of one buffer can share it, as each layer's delta has read the signal from
            # above before its own GEMM writes the next one
            for layer, signal in zip(layers, self.signals(n)):
                layer.update, layer.signal = update, signal
        if self.fused:
            grad = last.backward_from_delta(propagate=len(layers) > 1, db_ready=head)
        else:
            grad = last.backward(propagate=len(layers) > 1)
        for i in range(len(layers) - 2, -1, -1):
            grad = layers[i].backward(grad, propagate=i > 0)

    def step(self, n: int, optimizer, epoch: float, with_labels: bool):
        """One training step on the first n rows of the loaded batch.

        Plain SGD is folded into the backward pass's GEMMs (``optimizer.gemm_update``);
        any other optimizer updates from the gradients afterwards."""
        update = optimizer.gemm_update(epoch) if self.folded else None
        if self.folded and update is None:
            raise DensennError(f"this training network folds plain SGD into its GEMMs; {optimizer!r} needs "
                               "gradients (make the trainer with gradients=True)")
        self.forward_backward(n, with_labels, update)
        if update is None:
            optimizer.step(self.params, self.grads, self.decays, epoch)

    def read_acc(self, reset: bool = True):
        """(Σ loss, Σ correct) read from the engine, then zeroed."""
        loss, correct = (float(v) for v in self.engine.to_host(self.acc))
        if reset:
            self.engine.fill(self.acc, 0.0)
        return loss, correct

    def nbytes(self) -> dict:
        e = self.engine
        out = {"activations": 0, "gradients": 0, "work": 0}
        for layer in self.layers:
            for k, v in layer.nbytes().items():
                out[k] += v
        out["batch"] = sum(e.nbytes(b) for b in (self.x, self.y, self.labels, self.idx) if b is not None)
        out["work"] += sum(e.nbytes(b) for b in (self.cost_work, self.metric_work, self.acc, self.signal)
                           if b is not None)
        return out

    def release(self):
        for layer in self.layers:
            layer.release()
        for name in ("x", "y", "labels", "idx", "cost_work", "metric_work", "acc", "signal"):
            if getattr(self, name) is not None:
                self.engine.release(getattr(self, name))
                setattr(self, name, None)       # nothing stays reachable through a released network
        self.layers = []
        self._views = {}
        self._signal_views = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# -- the network ---------------------------------------------------------------------------
class Network:
    """A fully-connected network on one engine.

    >>> net = Network(784, [Dense(256, "relu"), Dense(10, "softmax")], engine="cpu", seed=0)

    ``n_in`` is the number of input features; ``layers`` a list of ``Dense``;
    ``engine`` a name (``"cpu"``, ``"opencl"``, ``"cuda"``) or an engine; ``dtype``
    ``"float32"`` or ``"float64"``; ``seed`` fixes the initial weights and the
    shuffling in ``fit``.
    """

    def __init__(self, n_in: int, layers, engine=None, dtype="float32", seed: int = 0):
        self.n_in = check_positive_int("n_in", n_in)
        if isinstance(layers, Dense):
            layers = [layers]
        try:
            layers = list(layers)
        except TypeError:
            raise DensennError(f"layers must be a list of densenn.Dense, got {describe(layers)}") from None
        if not layers:
            raise DensennError("layers must hold at least one densenn.Dense, got an empty list")
        for i, spec in enumerate(layers):
            if not isinstance(spec, Dense):
                raise DensennError(f"layers[{i}] must be a densenn.Dense, got {describe(spec)}")
        self.specs = layers
        self.seed = check_nonnegative_int("seed", seed)
        self.engine = get_engine(engine)
        self.dtype = check_dtype(self.engine, dtype)
        rng = np.random.default_rng(self.seed)
        self.layers: list[DenseInference] = []
        fan_in = self.n_in
        for spec in layers:
            act = get_activation(spec.activation)
            w = init_weights(fan_in, spec.units, spec.init or default_init(act.name), rng)
            self.layers.append(DenseInference(
                self.engine, fan_in, spec.units, act, self.dtype,
                w=self.engine.to_engine(w, self.dtype), b=self.engine.zeros((spec.units,), self.dtype)))
            fan_in = spec.units
        # a separate stream for shuffling, so fit's batches don't depend on the layer count
        self._shuffle_rng = np.random.default_rng([self.seed, 1])
        self._trainer: TrainingNetwork | None = None
        self.optimizer = None
        self.history = None
        # one fit (or gradients, set_weights, release) at a time on this network; predict and
        # evaluate read the weights only and do not take it (see "Threads" in the README)
        self._lock = threading.RLock()

    # -- pickling ----------------------------------------------------------------------
    def __reduce__(self):
        # the engine (threads, device handles) does not pickle: the architecture, the weights,
        # the engine's name and the shuffling stream's state do, and rebuild the network
        self._check_alive()
        return (_unpickle, (self.config(), self.engine.name, self.get_weights(),
                            self._shuffle_rng.bit_generator.state, self.history))

    def _check_alive(self):
        if not self.layers:
            raise DensennError("this network was released (release() or the end of its with-block); "
                               "it has no weights left to use")

    # -- description ---------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return self.specs[-1].units

    def config(self) -> dict:
        return {"n_in": self.n_in, "layers": [s.config() for s in self.specs],
                "dtype": self.dtype.name, "seed": self.seed}

    def __repr__(self):
        arch = "-".join([str(self.n_in)] + [f"{s.units}{get_activation(s.activation).name[:4]}" for s in self.specs])
        return f"Network({arch}, engine={self.engine.name!r}, dtype={self.dtype.name!r})"

    def summary(self) -> str:
        """A table of layers, shapes and parameter counts."""
        lines = [f"{'layer':<8}{'shape':>14}{'activation':>14}{'params':>12}"]
        total = 0
        for i, layer in enumerate(self.layers):
            n = layer.n_in * layer.n_out + layer.n_out
            total += n
            lines.append(f"{i:<8}{f'{layer.n_in}→{layer.n_out}':>14}{layer.activation.name:>14}{n:>12,}")
        lines.append(f"total params: {total:,}  ({self.dtype.name}, engine {self.engine.name})")
        return "\n".join(lines)

    # -- weights --------------------------------------------------------------------
    def get_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(w, b), ...] as NumPy copies; w is (out, in), b is (out,)."""
        self._check_alive()
        return [(self.engine.to_host(l.w), self.engine.to_host(l.b)) for l in self.layers]

    def set_weights(self, weights) -> None:
        """Overwrite every layer's weights from [(w, b), ...] (NumPy arrays of the shapes get_weights gives)."""
        self._check_alive()
        try:
            weights = list(weights)
        except TypeError:
            raise DensennError(f"weights must be a list of (w, b) pairs, got {describe(weights)}") from None
        if len(weights) != len(self.layers):
            raise DensennError(f"weights must hold {len(self.layers)} (w, b) pairs, got {len(weights)}")
        checked = []
        for i, (pair, layer) in enumerate(zip(weights, self.layers)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise DensennError(f"weights[{i}] must be a (w, b) pair, got {describe(pair)}")
            w = check_matrix(f"weights[{i}][0] (w)", pair[0], dtype=self.dtype)
            if w.shape != (layer.n_out, layer.n_in):
                raise DensennError(f"weights[{i}][0] (w) must have shape ({layer.n_out}, {layer.n_in}), got {w.shape}")
            b = np.asarray(pair[1])
            if b.shape != (layer.n_out,):
                raise DensennError(f"weights[{i}][1] (b) must be a finite vector of shape ({layer.n_out},), "
                                   f"got {describe(b)}")
            b = check_matrix(f"weights[{i}][1] (b)", b.reshape(1, -1), dtype=self.dtype)[0]
            checked.append((w, b))
        with self._lock:
            for (w, b), layer in zip(checked, self.layers):
                self.engine.upload(w, layer.w)
                self.engine.upload(b, layer.b)

    # -- inference ---------------------------------------------------------------------
    def _check_x(self, x, name="x"):
        """x as a C-contiguous array of the network's dtype, finite after the cast."""
        self._check_alive()
        return check_matrix(name, x, n_features=self.n_in, dtype=self.dtype)

    def _forward_chunks(self, x: np.ndarray, chunk: int):
        """Yield (start, engine output) for consecutive chunks of rows of x (of the network's dtype)."""
        for start in range(0, x.shape[0], chunk):
            a = self.engine.to_engine(x[start:start + chunk])
            for layer in self.layers:
                a = layer(a)
            yield start, a

    def predict(self, x, batch_size: int = 4096) -> np.ndarray:
        """The network's output for every row of x: a NumPy ``(n_samples, n_out)`` array."""
        x = self._check_x(x)
        check_positive_int("batch_size", batch_size)
        out = np.empty((x.shape[0], self.n_out), dtype=self.dtype)
        for start, a in self._forward_chunks(x, batch_size):
            out[start:start + a.shape[0]] = self.engine.to_host(a)
        return out

    def predict_classes(self, x, batch_size: int = 4096) -> np.ndarray:
        """Class indices: argmax of the outputs (or output > 0.5 for a single output).

        DensennError when an output is NaN: there is no class to give (inputs too large for
        the dtype overflow the network, or its weights diverged)."""
        p = self.predict(x, batch_size)
        bad = np.isnan(p).any(axis=1)
        if bad.any():
            raise DensennError(f"the network's outputs are NaN for {int(bad.sum())} of {len(p)} rows of x "
                               f"(the first: row {int(bad.argmax())}), so they have no class; inputs of "
                               f"magnitude near the {self.dtype.name} limit overflow inside the network")
        return (p[:, 0] > 0.5).astype(np.int64) if self.n_out == 1 else p.argmax(axis=1)

    def default_cost(self) -> str:
        last = self.layers[-1].activation.name
        if last == "softmax":
            return "crossentropy"
        if last == "sigmoid":
            return "binary_crossentropy"
        return "quadratic"

    def evaluate(self, x, y, cost=None, batch_size: int = 4096) -> dict:
        """{"loss": mean cost, "accuracy": fraction correct (None for regression targets)}."""
        x = self._check_x(x)
        check_positive_int("batch_size", batch_size)
        targets, labels = prepare_targets(y, x.shape[0], self.n_out)
        cost = get_cost(cost or self.default_cost())
        cost.check_targets(targets, "y")
        targets = check_matrix("y", targets, dtype=self.dtype)
        e = self.engine
        acc = e.zeros((2,), self.dtype)
        for start, a in self._forward_chunks(x, batch_size):
            n = a.shape[0]
            t = e.to_engine(targets[start:start + n])
            cost.value(e, a, t, e.empty(a.shape, self.dtype), acc[0:1])
            if labels is not None:
                lab = e.to_engine(labels[start:start + n].astype(index_dtype(e)))
                count_correct(e, a, lab, e.empty((n,), index_dtype(e)), acc[1:2])
        loss, correct = (float(v) for v in e.to_host(acc))
        n = x.shape[0]
        return {"loss": loss / n, "accuracy": None if labels is None else correct / n}

    def confusion_matrix(self, x, y) -> np.ndarray:
        """Counts[i, j] of samples of true class i predicted as j."""
        from densenn.metrics import confusion_matrix

        x = self._check_x(x)
        _, labels = prepare_targets(y, x.shape[0], self.n_out)
        if labels is None:
            raise DensennError("y must be class labels (indices or one-hot) for a confusion matrix")
        return confusion_matrix(labels, self.predict_classes(x), max(self.n_out, 2))

    # -- training -----------------------------------------------------------------------
    def trainer(self, batch_size: int, cost, gradients: bool = True) -> TrainingNetwork:
        """The training network for this batch size and cost (reused while they stay the same).

        ``gradients=False`` (for an optimizer whose updates fold into the GEMMs, plain SGD)
        needs no ∇w buffers; a trainer that has them serves that too."""
        cost = get_cost(cost)
        t = self._trainer
        if t is None or t.batch != batch_size or type(t.cost) is not type(cost) or (gradients and not t.gradients):
            if t is not None:
                t.release()
            self._trainer = TrainingNetwork(self, batch_size, cost, gradients)
        return self._trainer

    def fit(self, x, y, epochs: int = 10, batch_size: int = 32, cost=None, optimizer=None, **kwargs):
        """Train with mini-batches; returns a :class:`densenn.train.History`. See ``densenn.train.fit``."""
        from densenn.train import fit

        self._check_alive()
        with self._lock:
            return fit(self, x, y, epochs=epochs, batch_size=batch_size, cost=cost, optimizer=optimizer, **kwargs)

    def gradients(self, x, y, cost=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(∂C/∂w, ∂C/∂b), ...] of the mean cost over all of (x, y), as NumPy arrays."""
        x = self._check_x(x)
        targets, labels = prepare_targets(y, x.shape[0], self.n_out)
        targets = check_matrix("y", targets, dtype=self.dtype)
        n = x.shape[0]
        e = self.engine
        with self._lock, TrainingNetwork(self, n, cost or self.default_cost()) as tn:
            e.upload(x, tn.x)
            e.upload(targets, tn.y)
            tn.forward_backward(n, with_labels=False)
            return [tuple(e.to_host(g) for g in layer.grads) for layer in tn.layers]

    # -- engines, memory, saving ---------------------------------------------------------
    def to_engine(self, engine, dtype=None) -> "Network":
        """A copy of this network (same weights) on another engine and/or dtype."""
        self._check_alive()
        other = Network(self.n_in, self.specs, engine=engine, dtype=dtype or self.dtype, seed=self.seed)
        other.set_weights(self.get_weights())
        return other

    def nbytes(self) -> dict:
        """Bytes this network owns on its engine: weights, optimizer state, activations, work, total."""
        out = {"weights": sum(l.nbytes() for l in self.layers),
               "optimizer": self.optimizer.nbytes() if self.optimizer is not None else 0,
               "activations": 0, "gradients": 0, "batch": 0, "work": 0}
        if self._trainer is not None:
            for k, v in self._trainer.nbytes().items():
                out[k] += v
        out["total"] = sum(out.values())
        return out

    def save(self, path, extra: dict | None = None) -> str:
        """Write the architecture and weights (and ``extra`` JSON) to one file, atomically.

        See ``densenn.io`` for the format. Returns the path."""
        from densenn.io import save

        return save(self, path, extra)

    def release(self):
        """Release all engine memory this network owns; the network is unusable afterwards
        (its methods then raise DensennError). Not to be called while another thread uses it."""
        with self._lock:
            if self._trainer is not None:
                self._trainer.release()
                self._trainer = None
            if self.optimizer is not None:
                self.optimizer.release()
            for layer in self.layers:
                layer.release()
            self.layers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _unpickle(config, engine_name, weights, shuffle_state, history) -> Network:
    """The network ``Network.__reduce__`` describes, on the engine of that name here."""
    net = Network(config["n_in"], [Dense.from_config(c) for c in config["layers"]], engine=engine_name,
                  dtype=config["dtype"], seed=config["seed"])
    net.set_weights(weights)
    net._shuffle_rng.bit_generator.state = shuffle_state
    net.history = history
    return net
