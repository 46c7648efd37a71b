"""An activation as a layer of its own: a = f(x), after a layer that has none (a Dense
layer's linear part normalised by BatchNorm, for example).

Forward ``a = f(x)`` keeps x (the layer below's output). Backward is the seed's delta,
written where the signal goes: ``x = f'(x) ∘ grad``, into the layer below's output
buffer, which is what that layer reads as its gradient.
"""
from __future__ import annotations

from densenn.nn.activation import Activation, ActivationFn, get_activation
from densenn.nn.layer import Inference, Layer, TrainingLayer


class ActivationLayer(Layer):
    """``a = f(x)``, no parameters. A name or an Activation in the layer list means one."""

    type = "activation"
    config_keys = (("activation",), ())

    def __init__(self, activation: str | Activation = "relu"):
        self.activation = get_activation(activation)

    def config(self) -> dict:
        return {"type": self.type, "activation": self.activation.config()}

    @classmethod
    def from_config(cls, cfg: dict) -> ActivationLayer:
        return cls(get_activation(cfg["activation"]))

    def __eq__(self, other):
        return isinstance(other, ActivationLayer) and other.activation == self.activation

    def __hash__(self):
        return hash((self.type, self.activation.name, self.activation.param))

    def __repr__(self):
        return f"ActivationLayer({self.activation.name!r})"

    def short(self) -> str:
        return self.activation.name[:4]

    def build(self, engine, n_in, dtype, rng, seed, index):
        return ActivationInference(engine, n_in, self.activation, dtype)


class ActivationInference(Inference):
    def __init__(self, engine, n_in: int, activation: Activation, dtype):
        super().__init__(engine, n_in, dtype)
        self.activation = activation

    def __call__(self, x):
        """f(x) for any number of rows, into a new array (x is kept)."""
        a = self.engine.empty(x.shape, self.dtype)
        work = ActivationFn.for_layer(self.activation, self.engine, x.shape[0], self.n_out, self.dtype)
        work.activ(x, a)
        work.release()
        return a

    def describe(self) -> str:
        return self.activation.name

    def __repr__(self):
        return f"ActivationInference({self.n_in}, {self.activation.name})"


class ActivationTraining(TrainingLayer):
    """Owns ``a`` (batch, n) and the activation's working memory."""

    def __init__(self, inference: ActivationInference, x, batch: int):
        super().__init__(inference, x, batch)
        self.a = self.engine.empty((batch, inference.n_out), inference.dtype)
        self.activ_fn = ActivationFn.for_layer(inference.activation, self.engine, batch, inference.n_out,
                                               inference.dtype)

    def forward(self):
        """a = f(x). Overwrites a."""
        return self.activ_fn.activ(self.x, self.a)

    def backward(self, grad=None, propagate: bool = True):
        """x = f'(x) ∘ grad (grad default ``a``; may be overwritten): the signal, into the layer
        below's output. The first layer (propagate False) has nothing to do. Returns x."""
        if not propagate:
            return None
        self.activ_fn.delta(self.x, self.a if grad is None else grad)
        return self.x


# the inference layers make their training layers, defined after them
ActivationInference.training_class = ActivationTraining
