"""The network: the user API over the inference layers of one engine.

``Network`` owns the inference layers (weights) on one engine and offers the
user API (``fit``, ``predict``, ``evaluate``, ``gradients``, weights, saving).
``TrainingNetwork`` (densenn.nn.trainer) is built from it for one batch size and one
cost, and runs one allocation-free training step; ``fit`` (densenn.training) loops it.
"""
from __future__ import annotations

import threading

import numpy as np

from densenn import modelfile
from densenn.backend import check_dtype, get_engine
from densenn.errors import DensennError, check_matrix, check_nonnegative_int, check_positive_int, describe
from densenn.nn.activation import get_activation
from densenn.nn.cost import get_cost
from densenn.nn.dense import Dense, DenseInference
from densenn.nn.init import default_init, init_weights
from densenn.nn.metrics import confusion_matrix, count_correct
from densenn.nn.targets import LABEL_DTYPE, index_dtype, prepare_targets
from densenn.nn.trainer import TrainingNetwork
from densenn.training import fit

__all__ = ["Network", "Dense", "TrainingNetwork", "prepare_targets", "index_dtype", "LABEL_DTYPE"]

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
    def get_weights(self) -> list[tuple[np.ndarray, ...]]:
        """[(w, b), ...] as NumPy copies; w is (out, in), b is (out,)."""
        self._check_alive()
        return [tuple(self.engine.to_host(p) for p in layer.params) for layer in self.layers]

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

    def tensors(self) -> dict[str, np.ndarray]:
        """Every parameter as a NumPy copy, named as in a model file: ``layers.{i}.{name}``."""
        self._check_alive()
        return {f"layers.{i}.{name}": self.engine.to_host(p) for i, layer in enumerate(self.layers)
                for name, p in zip(layer.tensor_names, layer.params)}

    @classmethod
    def from_file_parts(cls, config: dict, tensors: dict, engine=None, dtype=None) -> Network:
        """The network a checked model file describes (see densenn.modelfile.read)."""
        specs = [Dense.from_config(c) for c in config["layers"]]
        net = cls(config["n_in"], specs, engine=engine, dtype=dtype or config["dtype"], seed=config.get("seed", 0))
        net.set_weights([tuple(tensors[f"layers.{i}.{name}"] for name in layer.tensor_names)
                         for i, layer in enumerate(net.layers)])
        return net

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
            t = self._trainer = TrainingNetwork(self, batch_size, cost, gradients)
        return t

    def fit(self, x, y, epochs: int = 10, batch_size: int = 32, cost=None, optimizer=None, **kwargs):
        """Train with mini-batches; returns a :class:`densenn.training.History`. See ``densenn.training.fit``."""
        self._check_alive()
        with self._lock:
            return fit(self, x, y, epochs=epochs, batch_size=batch_size, cost=cost, optimizer=optimizer,
                       rng=self._shuffle_rng, on_begin=self._begin_fit, **kwargs)

    def _begin_fit(self, optimizer, history) -> None:
        # kept for after the fit (and for a fit stopped by Ctrl-C or a divergence)
        self.optimizer, self.history = optimizer, history

    def gradients(self, x, y, cost=None) -> list[tuple[np.ndarray, ...]]:
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
    def to_engine(self, engine, dtype=None) -> Network:
        """A copy of this network (same weights) on another engine and/or dtype."""
        self._check_alive()
        other = Network(self.n_in, self.specs, engine=engine, dtype=dtype or self.dtype, seed=self.seed)
        other.set_weights(self.get_weights())
        return other

    def nbytes(self) -> dict:
        """Bytes this network owns on its engine: weights, optimizer state, activations, work, total."""
        out = {"weights": sum(layer.nbytes() for layer in self.layers),
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
        return modelfile.save(self, path, extra)

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
