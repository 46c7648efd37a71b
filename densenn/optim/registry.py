"""Optimizers by name: the built-in ones, and user classes made known by register_optimizer."""
from __future__ import annotations

from typing import Any

from densenn.errors import DensennError, check_choice
from densenn.optim.adam import Adam, AdamW
from densenn.optim.base import Optimizer
from densenn.optim.schedules import from_config
from densenn.optim.sgd import SGD

OPTIMIZERS = {"sgd": SGD, "momentum": SGD, "nesterov": SGD, "adam": Adam, "adamw": Adam}
_REGISTERED: dict[str, type] = {}     # user optimizers, by name


def register_optimizer(cls: type[Optimizer]) -> type[Optimizer]:
    """Make a user-written Optimizer subclass known by its ``name`` (to get_optimizer, the
    CLI's --optimizer and optimizer configs); returns the class."""
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)) or not cls.name:
        raise DensennError(f"register_optimizer takes an Optimizer subclass with a name, got {cls!r}")
    OPTIMIZERS[cls.name] = _REGISTERED[cls.name] = cls
    return cls


def get_optimizer(spec, lr: float | None = None) -> Optimizer:
    """An optimizer from a name (``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adam"``,
    ``"adamw"``), a config dict, or an Optimizer (passed through)."""
    if isinstance(spec, Optimizer):
        if lr is not None and lr != spec.lr:
            raise DensennError(f"lr={lr!r} was given with an optimizer object that has lr={spec.lr!r}; "
                               "set the rate on the optimizer (e.g. densenn.Adam(lr)) or pass a name")
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        name = check_choice("optimizer", spec.pop("name", None), {"sgd", "adam"} | _REGISTERED.keys())
        return from_config("optimizer", _REGISTERED.get(name) or (SGD if name == "sgd" else Adam), spec)
    check_choice("optimizer", spec, OPTIMIZERS)
    kwargs: dict[str, Any] = {} if lr is None else {"lr": lr}
    if spec == "momentum":
        return SGD(momentum=0.9, **kwargs)
    if spec == "nesterov":
        return SGD(momentum=0.9, nesterov=True, **kwargs)
    if spec == "adamw":
        return AdamW(**kwargs)
    return OPTIMIZERS[spec](**kwargs)
