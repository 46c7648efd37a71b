"""Layer specs: what a user lists in ``Network(n_in, [...])``, and the protocols of the
layers built from them.

A **spec** (``Dense``, ``Dropout``, ``BatchNorm``, ``LayerNorm``, ``ActivationLayer``)
holds hyper-parameters only. ``build`` makes its **inference layer** on an engine, which
owns the layer's parameters and state and runs any batch (``layer(x)`` returns the
output; inference mode: dropout is the identity, batch normalisation uses its running
statistics). ``training(x, batch)`` makes a **training layer** from it for one batch
size, sharing the parameters (see ``DenseTraining`` for that protocol).

The inference-layer protocol: ``n_in``, ``n_out``; ``params`` (trainable engine arrays,
in the order of ``get_weights``) and ``param_names``; ``buffers`` and ``buffer_names``
(saved state that is not trained, such as running statistics); ``state()`` and
``load_state`` (other state: dropout's step count); ``layer(x)``;
``training(x, batch, folded)``; ``describe()`` (the activation column of ``summary``);
``nbytes()``; ``release()``. Specs register themselves under their ``type``, the name
model files use.
"""
from __future__ import annotations

import abc
import copy
from typing import Any

from densenn.errors import DensennError, check_choice, describe
from densenn.nn.activation import Activation

#: spec classes by the "type" of their config
LAYER_TYPES: dict[str, type[Layer]] = {}


class Layer(abc.ABC):
    """Base of the layer specs. A subclass sets ``type`` and implements ``config`` and
    ``build``, and where they differ from these defaults ``from_config``, ``n_out``,
    ``tensor_shapes``, ``expand``, ``check_place`` and ``short``."""

    type: str = ""
    #: the keys of its config besides "type": required, optional
    config_keys: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.type:
            LAYER_TYPES[cls.type] = cls

    @abc.abstractmethod
    def config(self) -> dict:
        """The spec as JSON-able values, with its ``type`` (what a model file keeps)."""

    @classmethod
    def from_config(cls, cfg: dict) -> Layer:
        return cls(**{k: v for k, v in cfg.items() if k != "type"})

    def n_out(self, n_in: int) -> int:
        """The width of this layer's output for an input of ``n_in`` features."""
        return n_in

    def tensor_shapes(self, n_in: int) -> dict[str, tuple]:
        """Every tensor a model file holds for this layer: {name: shape}."""
        return {}

    def expand(self) -> list[Layer]:
        """The specs this one stands for (``Dense(..., norm="batch")`` is three)."""
        return [self]

    def check_place(self, index: int) -> None:
        """DensennError when this layer cannot stand at ``index`` of the network (any place, by default)."""
        return None

    def short(self) -> str:
        """A few letters for ``repr(network)``."""
        return self.type

    @abc.abstractmethod
    def build(self, engine, n_in: int, dtype, rng, seed: int, index: int):
        """The inference layer on ``engine`` (weights drawn from ``rng``; ``seed`` and
        ``index`` name a layer's own random stream)."""


def as_layer(item: Any, where: str) -> Layer:
    """A spec from what a user listed: a spec, or an activation (a name or an Activation)."""
    if isinstance(item, Layer):
        return item
    if isinstance(item, (str, Activation)):
        activation_layer: Any = LAYER_TYPES["activation"]
        return activation_layer(item)
    raise DensennError(f"{where} must be a layer (densenn.Dense, Dropout, BatchNorm, LayerNorm, ActivationLayer) "
                       f"or an activation name, got {describe(item)}")


def expand_layers(items) -> list[Layer]:
    """The network's specs, each placed where it may stand."""
    if isinstance(items, (Layer, str, Activation)):
        items = [items]
    try:
        items = list(items)
    except TypeError:
        raise DensennError(f"layers must be a list of layers (densenn.Dense, ...), got {describe(items)}") from None
    if not items:
        raise DensennError("layers must hold at least one layer, got an empty list")
    specs: list[Layer] = []
    for i, item in enumerate(items):
        specs += as_layer(item, f"layers[{i}]").expand()
    for i, spec in enumerate(specs):
        spec.check_place(i)
    return specs


def layer_type(cfg, where: str) -> type[Layer]:
    """The spec class a layer config names (no "type": a Dense layer, as files before types had)."""
    kind = cfg.get("type", "dense") if isinstance(cfg, dict) else None
    return LAYER_TYPES[check_choice(f"{where}.type", kind, LAYER_TYPES)]


def release_named(engine, owner, names) -> None:
    """Release the engine arrays ``owner`` holds under ``names`` and forget them (None), so
    that nothing stays reachable through a released layer."""
    released: list = []
    for name in names:
        buf = getattr(owner, name)
        if buf is not None and not any(buf is r for r in released):   # one buffer may have two names
            engine.release(buf)
            released.append(buf)
        setattr(owner, name, None)


class TrainingLayer:
    """What the training layers share: the input ``x`` (the layer below's
    output, or the network's batch), the buffers the layer owns, listed by kind, row views
    for a smaller last batch, ``nbytes`` and ``release``. A subclass lists its buffers'
    attribute names in ``activations`` (batch-shaped: its output ``a`` first), ``gradients``
    (parameter-shaped) and ``work`` (batch-shaped scratch), and sets ``batch_work`` to the
    ones of those that are batch-shaped."""

    activations: tuple[str, ...] = ("a",)
    gradients: tuple[str, ...] = ()
    work: tuple[str, ...] = ()
    batch_work: tuple[str, ...] = ()
    #: an activation's working memory (densenn.nn.activation.ActivationFn), where the layer has one
    activ_fn: Any = None
    #: whether weight decay applies to each parameter (never to a scale or shift)
    decays: tuple[bool, ...] = ()

    def __init__(self, inference, x, batch: int):
        if tuple(x.shape) != (batch, inference.n_in):
            raise DensennError(f"layer input must have shape ({batch}, {inference.n_in}), got {tuple(x.shape)}")
        self.engine = inference.engine
        self.inference = inference
        self.x = x
        self.batch = batch
        self._owner = True

    @property
    def params(self) -> tuple:
        return self.inference.params

    @property
    def grads(self) -> tuple:
        return tuple([getattr(self, name) for name in self.gradients])

    def rows(self, n: int):
        """A view of this layer on the first ``n`` samples (shares every buffer)."""
        if not 0 < n <= self.batch:
            raise DensennError(f"rows must be in 1..{self.batch}, got {n}")
        view = copy.copy(self)
        view.x = self.x[:n]
        for name in self.activations + self.batch_work:
            setattr(view, name, getattr(self, name)[:n])
        if self.activ_fn is not None:
            view.activ_fn = self.activ_fn.rows(n)
        view.batch = n
        view._owner = False
        return view

    def nbytes(self) -> dict:
        e = self.engine

        def size(names):        # a released layer owns nothing; a buffer with two names counts once
            bufs = [getattr(self, n) for n in names]
            return sum(e.nbytes(buf) for i, buf in enumerate(bufs)
                       if buf is not None and not any(buf is other for other in bufs[:i]))

        work = size(self.work) + (self.activ_fn.nbytes() if self.activ_fn is not None else 0)
        return {"activations": size(self.activations), "gradients": size(self.gradients), "work": work}

    def release(self):
        if self._owner:
            release_named(self.engine, self, self.activations + self.gradients + self.work)
            if self.activ_fn is not None:
                self.activ_fn.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return f"{type(self).__name__}({self.inference.n_in}, batch={self.batch})"


class Inference:
    """What the inference layers share: sizes, named parameters and buffers, ``nbytes`` and
    ``release``. A subclass lists the attribute names in ``param_names`` and ``buffer_names``;
    ``state``/``load_state`` carry what else a copy of the layer needs (dropout's step count)."""

    param_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()
    #: the training layer's class, and the summary's activation column
    training_class: Any = None
    label = ""

    def __init__(self, engine, n_in: int, dtype):
        self.engine = engine
        self.n_in = self.n_out = n_in
        self.dtype = dtype

    @property
    def params(self) -> tuple:
        return tuple([getattr(self, name) for name in self.param_names])

    @property
    def buffers(self) -> tuple:
        return tuple([getattr(self, name) for name in self.buffer_names])

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return self.param_names + self.buffer_names

    def describe(self) -> str:
        return self.label

    def state(self) -> dict:
        """Non-tensor state that copies, pickles and checkpoints keep (JSON-able values)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Take back what ``state`` gave."""

    def training(self, x, batch: int, folded: bool = False):
        """The training layer reading ``x`` for batches of ``batch`` (``folded`` is for Dense)."""
        return self.training_class(self, x, batch)

    def nbytes(self) -> int:
        return sum(self.engine.nbytes(buf) for buf in self.params + self.buffers if buf is not None)

    def release(self):
        release_named(self.engine, self, self.param_names + self.buffer_names)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
