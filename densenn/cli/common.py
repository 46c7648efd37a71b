"""What the subcommands share: defaults, output (human report or ``--json``), errors, data."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import numpy as np

from densenn.errors import DensennError
from densenn.optim import OPTIMIZERS, SCHEDULES

PROG = "densenn"
CLI_FORMAT = 1          # version of the "cli" block this command stores in a model's extra

#: per data set defaults for ``train`` (an option given on the command line wins)
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"layers": [256, 128], "epochs": 30, "batch_size": 32, "schedule": "constant", "standardize": True,
               "weight_decay": 1e-3},
    "mnist": {"layers": [256, 128], "epochs": 15, "batch_size": 128, "schedule": "cosine", "standardize": False,
              "weight_decay": 0.0},
}
#: the choices of --optimizer and --schedule: the registries' names
OPTIMIZER_NAMES = tuple(OPTIMIZERS)
SCHEDULE_NAMES = tuple(SCHEDULES)
#: the choices of --norm: what Dense(units, activation, norm=...) takes ("none": no normalisation)
NORM_NAMES = ("batch", "layer", "none")
#: default learning rate per optimizer name on the command line
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.01, "nesterov": 0.01, "adam": 1e-3, "adamw": 1e-3}
DIGITS_SPLIT: dict[str, Any] = {"test_size": 0.2, "seed": 0}


# -- output ---------------------------------------------------------------------------------
def _say(args, *parts, **kw):
    """Human output: stdout normally, stderr under --json (stdout then holds only the JSON)."""
    print(*parts, file=sys.stderr if getattr(args, "json", False) else sys.stdout, **kw)


def _clean(value):
    """JSON-safe: NumPy scalars/arrays to Python, non-finite floats to None, unknown objects to str."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(_clean(obj), indent=2) + "\n")
    sys.stdout.flush()


def _oneline(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _guard(fn, default=None):
    """fn(), or an 'error: ...' string: info must never crash."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - anything a broken install can throw
        return default if default is not None else f"error: {type(exc).__name__}: {_oneline(exc)}"


# -- engines, data, models --------------------------------------------------------------------
def _engine(name):
    from densenn.backend import get_engine

    return get_engine(name)


def _load_dataset(name: str, data_dir, split: dict | None = None, download: bool = False):
    """The data set, not standardised: pixels scaled to [0, 1] (digits and MNIST alike)."""
    from densenn import datasets

    if name == "digits":
        split = split or DIGITS_SPLIT
        return datasets.load_digits(test_size=split.get("test_size", 0.2), seed=split.get("seed", 0),
                                    standardize=False)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DensennError(f"--data-dir {data_dir!r} is not a folder (it should hold the MNIST IDX files)")
    if data_dir is None and not download and not datasets.default_cache_dir().is_dir():
        raise DensennError(f"MNIST needs --data-dir PATH (the folder with the four IDX files) or --download "
                           f"(into {datasets.default_cache_dir()})")
    return datasets.load_mnist(data_dir=data_dir, standardize=False, flatten=True, download=download)


def _architecture(net) -> dict:
    """The network's layers as ``train --json`` and ``evaluate --json`` report them: one entry
    per layer (``type``, ``units`` (its output width), ``activation`` (None for a normalisation
    or dropout layer), and a dropout layer's ``rate``), the trainable parameter count (BatchNorm's
    running statistics are not parameters) and a one-line ``text``."""
    layers: list[dict[str, Any]] = []
    words = [str(net.n_in)]
    for spec, layer in zip(net.specs, net.layers):
        kind = spec.type
        entry: dict[str, Any] = {"type": kind, "units": int(layer.n_out), "activation": None}
        if kind == "dense":
            entry["activation"] = layer.activation.name
            words.append(f"{layer.n_out} {layer.activation.name}")
        elif kind == "activation":
            entry["activation"] = layer.activation.name
            words.append(layer.activation.name)
        elif kind == "dropout":
            entry["rate"] = float(layer.rate)
            words.append(f"dropout {layer.rate:g}")
        else:                                   # batchnorm, layernorm, and any layer type added later
            words.append(kind)
        layers.append(entry)
    params = sum(int(np.prod(p.shape)) for layer in net.layers for p in layer.params)
    return {"n_in": net.n_in, "layers": layers, "params": params, "text": " → ".join(words)}


def _standardizer_from(extra: dict):
    """The standardiser saved by ``densenn train`` (or None)."""
    block = extra.get("cli") if isinstance(extra, dict) else None
    if not isinstance(block, dict):
        return None
    state = block.get("standardizer")
    if not state:
        return None
    from densenn.datasets import Standardizer

    try:
        return Standardizer.from_dict(state)
    except DensennError:
        raise
    except Exception as exc:
        raise DensennError(f"the model's saved standardiser is unreadable: {exc}") from None
