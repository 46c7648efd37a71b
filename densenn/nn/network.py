"""The network: the user API over the inference layers of one engine.

``Network`` owns the inference layers (weights) on one engine and offers the
user API (``fit``, ``predict``, ``evaluate``, ``gradients``, weights, saving).
``TrainingNetwork`` (densenn.nn.trainer) is built from it for one batch size and one
cost, and runs one allocation-free training step; ``fit`` (densenn.training) loops it.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from densenn import modelfile, onnxfile
from densenn.backend import check_dtype, get_engine
from densenn.errors import DensennError, check_matrix, check_nonnegative_int, check_positive_int, describe
from densenn.nn.activation_layer import ActivationLayer
from densenn.nn.cost import get_cost
from densenn.nn.dense import Dense, DenseInference
from densenn.nn.dropout import Dropout
from densenn.nn.layer import expand_layers, layer_type
from densenn.nn.metrics import confusion_matrix, count_correct
from densenn.nn.norm import BatchNorm, LayerNorm
from densenn.nn.targets import LABEL_DTYPE, index_dtype, prepare_targets
from densenn.nn.trainer import TrainingNetwork
from densenn.optim import Optimizer, get_optimizer
from densenn.training import fit
from densenn.training.weights import resolve_weights

__all__ = ["Network", "from_onnx", "Dense", "Dropout", "BatchNorm", "LayerNorm", "ActivationLayer", "TrainingNetwork",
           "prepare_targets", "index_dtype", "LABEL_DTYPE"]

# -- the network ---------------------------------------------------------------------------
class Network:
    """A fully-connected network on one engine.

    >>> net = Network(784, [Dense(256, "relu"), Dense(10, "softmax")], engine="cpu", seed=0)

    ``n_in`` is the number of input features; ``layers`` a list of layers: ``Dense``,
    ``Dropout``, ``BatchNorm``, ``LayerNorm``, and activations (a name, an Activation or an
    ``ActivationLayer``) as layers of their own;
    ``engine`` a name (``"cpu"``, ``"opencl"``, ``"cuda"``) or an engine; ``dtype``
    ``"float32"`` or ``"float64"``; ``seed`` fixes the initial weights and the
    shuffling in ``fit``.
    """

    def __init__(self, n_in: int, layers, engine=None, dtype="float32", seed: int = 0):
        self.n_in = check_positive_int("n_in", n_in)
        self.specs = expand_layers(layers)
        self.seed = check_nonnegative_int("seed", seed)
        self.engine = get_engine(engine)
        self.dtype = check_dtype(self.engine, dtype)
        rng = np.random.default_rng(self.seed)
        self.layers: list = []
        fan_in = self.n_in
        for index, spec in enumerate(self.specs):
            self.layers.append(spec.build(self.engine, fan_in, self.dtype, rng, self.seed, index))
            fan_in = spec.n_out(fan_in)
        # a separate stream for shuffling, so fit's batches don't depend on the layer count
        self._shuffle_rng = np.random.default_rng([self.seed, 1])
        self._trainer: TrainingNetwork | None = None
        self.optimizer: Optimizer | None = None
        self.history = None
        # one fit (or gradients, set_weights, release) at a time on this network; predict and
        # evaluate read the weights only and do not take it (see "Threads" in the README)
        self._lock = threading.RLock()

    # -- pickling ----------------------------------------------------------------------
    def __reduce__(self):
        # the engine (threads, device handles) does not pickle: the architecture, the weights,
        # the engine's name and the shuffling stream's state do, and rebuild the network
        self._check_alive()
        opt = self.optimizer
        # the optimizer goes along, its state included, so the copy trains on as this one would
        optimizer = None if opt is None or opt.engine is None else \
            (opt.config(), opt.t, [[self.engine.to_host(buf) for buf in bufs] for bufs in opt.state])
        return (_unpickle, (self.config(), self.engine.name, self.tensors(), self.layer_states(),
                            self._shuffle_rng.bit_generator.state, self.history, optimizer))

    def _check_alive(self):
        if not self.layers:
            raise DensennError("this network was released (release() or the end of its with-block); "
                               "it has no weights left to use")

    # -- description ---------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return self.layers[-1].n_out

    @property
    def output_activation(self) -> str | None:
        """The name of the last layer's activation (None when the last layer has none)."""
        act = getattr(self.layers[-1], "activation", None)
        return None if act is None else act.name

    def folds_sgd(self) -> bool:
        """Whether plain SGD can fold into the GEMMs: only Dense layers have parameters."""
        return all(isinstance(layer, DenseInference) or not layer.params for layer in self.layers)

    def config(self) -> dict:
        return {"n_in": self.n_in, "layers": [s.config() for s in self.specs],
                "dtype": self.dtype.name, "seed": self.seed}

    def __repr__(self):
        arch = "-".join([str(self.n_in)] + [spec.short() for spec in self.specs])
        return f"Network({arch}, engine={self.engine.name!r}, dtype={self.dtype.name!r})"

    def summary(self) -> str:
        """A table of layers, shapes and parameter counts (trainable; BatchNorm's running
        statistics are counted apart)."""
        lines = [f"{'layer':<8}{'type':<12}{'shape':>14}{'activation':>14}{'params':>12}"]
        total = state = 0
        for i, (spec, layer) in enumerate(zip(self.specs, self.layers)):
            n = sum(int(np.prod(p.shape)) for p in layer.params)
            total += n
            state += sum(int(np.prod(b.shape)) for b in layer.buffers)
            lines.append(f"{i:<8}{spec.type:<12}{f'{layer.n_in}→{layer.n_out}':>14}{layer.describe():>14}{n:>12,}")
        kept = f", {state:,} running statistics" if state else ""
        lines.append(f"total params: {total:,}{kept}  ({self.dtype.name}, engine {self.engine.name})")
        return "\n".join(lines)

    # -- weights --------------------------------------------------------------------
    def _params(self) -> list:
        """Every parameter's engine array, in the order a TrainingNetwork lists them."""
        return [p for layer in self.layers for p in layer.params]

    def _with_params(self) -> list:
        """The layers that have parameters, in order (those get_weights lists)."""
        return [layer for layer in self.layers if layer.params]

    def get_weights(self) -> list[tuple[np.ndarray, ...]]:
        """One tuple of NumPy copies per layer that has parameters, in order: Dense ``(w, b)``
        (w is (out, in), b is (out,)), BatchNorm and LayerNorm ``(gamma, beta)``."""
        self._check_alive()
        return [tuple(self.engine.to_host(p) for p in layer.params) for layer in self._with_params()]

    def set_weights(self, weights) -> None:
        """Overwrite every layer's parameters from the list ``get_weights`` gives (same shapes)."""
        self._check_alive()
        layers = self._with_params()
        try:
            weights = list(weights)
        except TypeError:
            raise DensennError(f"weights must be a list of tuples such as (w, b), got {describe(weights)}") from None
        if len(weights) != len(layers):
            raise DensennError(f"weights must hold {len(layers)} tuples (one per layer with parameters: "
                               f"{', '.join('(' + ', '.join(la.param_names) + ')' for la in layers)}), "
                               f"got {len(weights)}")
        checked = []
        for i, (group, layer) in enumerate(zip(weights, layers)):
            names = layer.param_names
            if not isinstance(group, (tuple, list)) or len(group) != len(names):
                what = "pair" if len(names) == 2 else "tuple"
                raise DensennError(f"weights[{i}] must be a ({', '.join(names)}) {what}, got {describe(group)}")
            checked.append([self._checked_tensor(f"weights[{i}][{k}] ({name})", value, tuple(p.shape))
                            for k, (name, value, p) in enumerate(zip(names, group, layer.params))])
        with self._lock:
            for values, layer in zip(checked, layers):
                for value, p in zip(values, layer.params):
                    self.engine.upload(value, p)

    def _checked_tensor(self, name: str, value, shape: tuple) -> np.ndarray:
        """``value`` as a finite array of the network's dtype and ``shape``; DensennError naming it."""
        if len(shape) == 2:
            x = check_matrix(name, value, dtype=self.dtype)
            if x.shape != shape:
                raise DensennError(f"{name} must have shape {shape}, got {x.shape}")
            return x
        v = np.asarray(value)
        if v.shape != shape:
            raise DensennError(f"{name} must be a finite vector of shape {shape}, got {describe(v)}")
        return check_matrix(name, v.reshape(1, -1), dtype=self.dtype)[0]

    def tensors(self) -> dict[str, np.ndarray]:
        """Every parameter and saved state (running statistics) as a NumPy copy, named as in a
        model file: ``layers.{i}.{name}``."""
        self._check_alive()
        return {name: self.engine.to_host(p) for name, p in self._engine_tensors().items()}

    def _engine_tensors(self) -> dict:
        """Every parameter and saved state as the engine array, by its model-file name."""
        return {f"layers.{i}.{name}": p for i, layer in enumerate(self.layers)
                for name, p in zip(layer.tensor_names, layer.params + layer.buffers)}

    def set_tensors(self, tensors: dict) -> None:
        """Overwrite every parameter and saved state from ``tensors`` (as ``tensors()`` names them)."""
        self._check_alive()
        expected = self._engine_tensors()
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise DensennError(f"tensors is missing {', '.join(missing)}")
        checked = {name: self._checked_tensor(name, tensors[name], tuple(p.shape)) for name, p in expected.items()}
        with self._lock:
            for name, p in expected.items():
                self.engine.upload(checked[name], p)

    def layer_states(self) -> list[dict]:
        """Each layer's non-tensor state (a dropout layer's step count: where its masks are in
        its random stream), for copies and pickles."""
        return [layer.state() for layer in self.layers]

    def load_layer_states(self, states) -> None:
        for layer, state in zip(self.layers, states):
            layer.load_state(state)

    @classmethod
    def from_file_parts(cls, config: dict, tensors: dict, engine=None, dtype=None) -> Network:
        """The network a checked model file describes (see densenn.modelfile.read)."""
        net = cls(config["n_in"], config_specs(config), engine=engine, dtype=dtype or config["dtype"],
                  seed=config.get("seed", 0))
        net.set_tensors(tensors)
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
        last = self.output_activation
        if last == "softmax":
            return "crossentropy"
        if last == "sigmoid":
            return "binary_crossentropy"
        return "quadratic"

    def evaluate(self, x, y, cost=None, batch_size: int = 4096, sample_weight=None, class_weight=None) -> dict:
        """{"loss": mean cost, "accuracy": fraction correct (None for regression targets)}.

        With ``sample_weight`` (one per sample) and/or ``class_weight`` (``{class: w}`` or
        ``"balanced"``; see densenn.training.weights) the weighted means Σ w·loss / Σ w and
        Σ w·hit / Σ w, as scikit-learn's scores take them."""
        x = self._check_x(x)
        check_positive_int("batch_size", batch_size)
        targets, labels = prepare_targets(y, x.shape[0], self.n_out)
        w = resolve_weights(sample_weight, class_weight, labels, x.shape[0], max(self.n_out, 2))
        cost = get_cost(cost or self.default_cost())
        cost.check_targets(targets, "y")
        targets = check_matrix("y", targets, dtype=self.dtype)
        e = self.engine
        acc = e.zeros((2,), self.dtype)
        if w is not None:
            w = w.astype(self.dtype)        # the weights the kernels read, and so the ones summed
        for start, a in self._forward_chunks(x, batch_size):
            n = a.shape[0]
            t = e.to_engine(targets[start:start + n])
            wc = None if w is None else e.to_engine(w[start:start + n])
            cost.value(e, a, t, e.empty(a.shape, self.dtype), acc[0:1], wc)
            if labels is not None:
                lab = e.to_engine(labels[start:start + n].astype(index_dtype(e)))
                hit = None if wc is None else e.empty((n,), np.bool_)
                count_correct(e, a, lab, e.empty((n,), index_dtype(e)), acc[1:2], wc, hit)
        loss, correct = (float(v) for v in e.to_host(acc))
        total = x.shape[0] if w is None else float(w.sum(dtype=np.float64))
        return {"loss": loss / total, "accuracy": None if labels is None else correct / total}

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
        gradients = gradients or not self.folds_sgd()
        t = self._trainer
        if t is None or t.batch != batch_size or type(t.cost) is not type(cost) or (gradients and not t.gradients):
            if t is not None:
                t.release()
            t = self._trainer = TrainingNetwork(self, batch_size, cost, gradients)
        return t

    def fit(self, x, y, epochs: int = 10, batch_size: int = 32, cost=None, optimizer=None, **kwargs):
        """Train with mini-batches; returns a :class:`densenn.training.History`. See ``densenn.training.fit``.

        Called again without ``optimizer`` (and ``lr``), it goes on with the optimizer of the
        last fit, its state (momentum, Adam's moments and step count) kept."""
        self._check_alive()
        if optimizer is None and kwargs.get("lr") is None and self.optimizer is not None:
            optimizer = self.optimizer
        with self._lock:
            return fit(self, x, y, epochs=epochs, batch_size=batch_size, cost=cost, optimizer=optimizer,
                       rng=self._shuffle_rng, on_begin=self._begin_fit, **kwargs)

    def _begin_fit(self, optimizer, history) -> None:
        # kept for after the fit (and for a fit stopped by Ctrl-C or a divergence)
        self.optimizer, self.history = optimizer, history

    def gradients(self, x, y, cost=None, sample_weight=None) -> list[tuple[np.ndarray, ...]]:
        """One tuple per layer with parameters (as ``get_weights``): the gradients of the mean
        cost over all of (x, y) in training mode, as NumPy arrays. Dense ``(∂C/∂w, ∂C/∂b)``,
        BatchNorm and LayerNorm ``(∂C/∂γ, ∂C/∂β)``; dropout uses the next step's masks.
        With ``sample_weight`` (one per sample), those of the weighted mean Σ w·C / Σ w."""
        with self._lock, self._whole_batch(x, y, cost, sample_weight) as (tn, n):
            tn.forward_backward(n, with_labels=False)
            return [tuple(self.engine.to_host(g) for g in layer.grads) for layer in tn.layers if layer.params]

    def training_loss(self, x, y, cost=None, sample_weight=None) -> float:
        """The mean cost over all of (x, y) in training mode (what ``gradients`` differentiates:
        batch statistics, the next step's dropout masks), weighted as Σ w·C / Σ w with
        ``sample_weight``; ``evaluate`` gives the inference one."""
        with self._lock, self._whole_batch(x, y, cost, sample_weight) as (tn, n):
            return tn.loss(n)

    @contextlib.contextmanager
    def _whole_batch(self, x, y, cost, sample_weight=None):
        """A training network holding all of (x, y) (and the weights) as one batch, released afterwards."""
        x = self._check_x(x)
        targets, _ = prepare_targets(y, x.shape[0], self.n_out)
        targets = check_matrix("y", targets, dtype=self.dtype)
        n = x.shape[0]
        w = resolve_weights(sample_weight, None, None, n, max(self.n_out, 2))
        with TrainingNetwork(self, n, cost or self.default_cost()) as tn:
            self.engine.upload(x, tn.x)
            self.engine.upload(targets, tn.y)
            if w is not None:
                tn.put_weights(w, n)
            yield tn, n

    # -- engines, memory, saving ---------------------------------------------------------
    def to_engine(self, engine, dtype=None) -> Network:
        """A copy of this network (same weights) on another engine and/or dtype."""
        self._check_alive()
        other = Network(self.n_in, self.specs, engine=engine, dtype=dtype or self.dtype, seed=self.seed)
        other.set_tensors(self.tensors())
        other.load_layer_states(self.layer_states())
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

    def to_onnx(self, path, opset: int | None = None) -> str:
        """Write the inference form as a standard ONNX graph (needs the onnx package; opset
        default 21, see docs/onnx.md), atomically. Returns the path."""
        self._check_alive()
        return onnxfile.export(self, path, opset)

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


def config_specs(config: dict) -> list:
    """The layer specs of a network's config (a Dense layer where a layer has no "type")."""
    return [layer_type(cfg, f"config.layers[{i}]").from_config(cfg) for i, cfg in enumerate(config["layers"])]


def from_onnx(path, engine=None, dtype=None) -> Network:
    """The Network an ONNX feed-forward graph (MatMul/Gemm/Add and activations, as PyTorch and
    skl2onnx write an MLP) describes, trainable further; in the graph's dtype unless ``dtype``
    is given. DensennError naming any node densenn cannot read. See docs/onnx.md."""
    n_in, specs, tensors, file_dtype = onnxfile.read(path)
    net = Network(n_in, specs, engine=engine, dtype=dtype or file_dtype)
    net.set_tensors(tensors)
    return net


def _unpickle(config, engine_name, tensors, states, shuffle_state, history, optimizer=None) -> Network:
    """The network ``Network.__reduce__`` describes, on the engine of that name here."""
    net = Network(config["n_in"], config_specs(config), engine=engine_name, dtype=config["dtype"],
                  seed=config["seed"])
    net.set_tensors(tensors)
    net.load_layer_states(states)
    net._shuffle_rng.bit_generator.state = shuffle_state
    net.history = history
    if optimizer is not None:
        opt_config, t, slots = optimizer
        # bound here to the parameters a trainer will share, so the next fit keeps the state
        opt = get_optimizer(opt_config).bind(net.engine, net._params(), net.dtype)
        for bufs, saved in zip(opt.state, slots):
            for buf, host in zip(bufs, saved):
                net.engine.upload(host, buf)
        opt.t = t
        net.optimizer = opt
    return net
