"""Weight initialisation: Glorot/Xavier and He, normal and uniform, and LeCun normal.

Weights are drawn on the host in float64 from a NumPy Generator and transferred
once, so the same seed gives the same initial network on every engine and in
either dtype (up to the final rounding to float32).
"""
from __future__ import annotations

import numpy as np

from densenn.errors import check_choice

#: name -> (gain² numerator, fan used, distribution)
_SCHEMES = {
    "glorot_uniform": (2.0, "avg", "uniform"),
    "glorot_normal": (2.0, "avg", "normal"),
    "xavier_uniform": (2.0, "avg", "uniform"),
    "xavier_normal": (2.0, "avg", "normal"),
    "he_uniform": (2.0, "in", "uniform"),
    "he_normal": (2.0, "in", "normal"),
    "lecun_normal": (1.0, "in", "normal"),
}
INITIALIZERS = tuple(_SCHEMES)

# ReLU-like activations lose half their variance; He's gain 2/fan_in restores it. Their
# smooth forms keep 0.36 (silu) to 0.45 (mish) of it for a unit normal z (relu: 0.5).
_HE_FOR = {"relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "mish"}
# SELU self-normalises (mean 0, variance 1 layer after layer) from LeCun's Var = 1/fan_in.
_LECUN_FOR = {"selu"}


def default_init(activation_name: str) -> str:
    if activation_name in _LECUN_FOR:
        return "lecun_normal"
    return "he_normal" if activation_name in _HE_FOR else "glorot_uniform"


def init_weights(n_in: int, n_out: int, scheme: str, rng: np.random.Generator) -> np.ndarray:
    """A float64 ``(n_out, n_in)`` weight matrix drawn with variance gain/fan.

    Glorot: Var = 2/(fan_in + fan_out); He: Var = 2/fan_in; LeCun: Var = 1/fan_in.
    Uniform draws use the limit sqrt(3·Var) so both forms have the same variance.
    """
    check_choice("init", scheme, _SCHEMES)
    gain, fan_kind, dist = _SCHEMES[scheme]
    fan = (n_in + n_out) / 2.0 if fan_kind == "avg" else float(n_in)
    var = gain / (2.0 * fan) if fan_kind == "avg" else gain / fan
    std = np.sqrt(var)
    if dist == "normal":
        return rng.normal(0.0, std, size=(n_out, n_in))
    limit = np.sqrt(3.0) * std
    return rng.uniform(-limit, limit, size=(n_out, n_in))
