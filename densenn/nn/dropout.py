"""Dropout (inverted): in training each value is kept with probability 1 - rate and
scaled by 1 / (1 - rate), so inference is the identity and needs no rescaling.

The mask is drawn on the engine (``engine.uniform``: a counter-based hash of the layer's
key and each element's index, see densenn.kernels.random), so a step moves nothing
between host and device and allocates nothing, and the same seed gives the same masks on
every engine. The key is the network's seed, the layer's index and a step count that
only a training step advances: ``net.gradients`` and gradient checks see the mask of the
next step, as often as they ask.

    forward:  m = u < rate ? 0 : 1/(1 - rate);  a = x ∘ m
    backward: x = grad ∘ m   (the signal, into the layer below's output)
"""
from __future__ import annotations

import numpy as np

from densenn.errors import DensennError, describe
from densenn.kernels import random
from densenn.kernels.ops import Map
from densenn.nn.layer import Inference, Layer, TrainingLayer


def _forward_np(engine, arrays, scalars, work):
    x, m, a = arrays
    rate, scale = scalars
    # u - rate is exact on the draws' grid (see grid_threshold), so floor gives -1 below the
    # rate and 0 from it: the comparison of the other forms, without a boolean temporary
    np.subtract(m, rate, out=m)
    np.floor(m, out=m)
    np.add(m, 1.0, out=m)
    np.multiply(m, scale, out=m)
    np.multiply(x, m, out=a)


def _backward_np(engine, arrays, scalars, work):
    g, m, x = arrays
    np.multiply(g, m, out=x)


#: ``rate`` is the grid threshold of the dropout rate (densenn.kernels.random.grid_threshold)
DROPOUT_FORWARD = Map("dropout_forward", "x m a", writes="m a", scalars="rate scale", numpy=_forward_np, body="""
m = 0 if m < rate else scale
a = x * m
""")
DROPOUT_BACKWARD = Map("dropout_backward", "g m x", writes="x", numpy=_backward_np, body="x = g * m")


def _check_rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise DensennError(f"Dropout rate must be a number in [0, 1) (the fraction of values dropped), "
                           f"got {describe(rate)}")
    return float(rate)


class Dropout(Layer):
    """Drop a fraction ``rate`` of the values in training (scaled to keep their mean)."""

    type = "dropout"
    config_keys = (("rate",), ())

    def __init__(self, rate: float = 0.5):
        self.rate = _check_rate(rate)

    def config(self) -> dict:
        return {"type": self.type, "rate": self.rate}

    def __eq__(self, other):
        return isinstance(other, Dropout) and other.rate == self.rate

    def __hash__(self):
        return hash((self.type, self.rate))

    def __repr__(self):
        return f"Dropout({self.rate})"

    def short(self) -> str:
        return f"drop{self.rate:g}"

    def build(self, engine, n_in, dtype, rng, seed, index):
        return DropoutInference(engine, n_in, self.rate, dtype, seed, index)


class DropoutInference(Inference):
    """Identity at inference. Holds the layer's random stream: ``seed``, ``stream`` (its
    index in the network) and ``steps`` (training steps taken, the draw's counter)."""

    def __init__(self, engine, n_in: int, rate: float, dtype, seed: int, stream: int):
        super().__init__(engine, n_in, dtype)
        self.rate = rate
        self.seed, self.stream, self.steps = seed, stream, 0

    def __call__(self, x):
        return x

    def key(self) -> int:
        return random.key(self.seed, self.stream, self.steps)

    def state(self) -> dict:
        return {"steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.steps = int(state["steps"])

    def describe(self) -> str:
        return f"rate {self.rate:g}"

    def __repr__(self):
        return f"DropoutInference({self.n_in}, rate={self.rate})"


class DropoutTraining(TrainingLayer):
    """Owns ``a`` and the mask ``m`` (batch, n)."""

    batch_work = work = ("m",)

    def __init__(self, inference: DropoutInference, x, batch: int):
        super().__init__(inference, x, batch)
        self.a = self.engine.empty((batch, inference.n_out), inference.dtype)
        self.m = self.engine.empty((batch, inference.n_out), inference.dtype)
        self._scalars = (random.grid_threshold(inference.rate), 1.0 / (1.0 - inference.rate))

    def forward(self):
        """m = the mask of this step, a = x ∘ m. Overwrites m and a."""
        self.engine.uniform(self.m, self.inference.key())
        self.engine.map(DROPOUT_FORWARD, (self.x, self.m, self.a), self._scalars)
        return self.a

    def backward(self, grad=None, propagate: bool = True):
        """x = grad ∘ m (grad default ``a``). Returns x (None for the first layer)."""
        if not propagate:
            return None
        self.engine.map(DROPOUT_BACKWARD, (self.a if grad is None else grad, self.m, self.x))
        return self.x

    def advance(self):
        """After a training step: the next step draws a new mask."""
        self.inference.steps += 1


# the inference layers make their training layers, defined after them
DropoutInference.training_class = DropoutTraining
