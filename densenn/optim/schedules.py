"""Learning-rate schedules: a factor of the base rate for each point of training."""
from __future__ import annotations

import math

from densenn.errors import DensennError, check_choice, check_float_range, check_positive_float, check_positive_int


class Schedule:
    """Maps training progress (epochs done, a float) to a factor of the base rate.

    ``total_epochs`` is filled in by ``fit`` when the schedule needs a horizon
    and none was given.
    """

    name = "constant"
    total_epochs: float | None = None
    #: whether total_epochs was set by fit (and so is set again by every fit), not by the user
    horizon_from_fit = False

    def begin_fit(self, epochs: int) -> None:
        """Called at the start of every ``fit``: a schedule with no horizon of its own spans
        that fit, and again the next fit it is used in (not just the first one)."""
        if self.total_epochs is None or self.horizon_from_fit:
            self.total_epochs = epochs
            self.horizon_from_fit = True

    def factor(self, epoch: float) -> float:
        return 1.0

    def config(self) -> dict:
        return {"name": self.name}


class Constant(Schedule):
    pass


class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` every ``every`` epochs."""

    name = "step"

    def __init__(self, every: int = 10, gamma: float = 0.1):
        self.every = check_positive_int("every", every)
        self.gamma = check_float_range("gamma", gamma, 0.0, 1.0, low_open=True)

    def factor(self, epoch):
        return self.gamma ** math.floor(epoch / self.every)

    def config(self):
        return {"name": self.name, "every": self.every, "gamma": self.gamma}


class LinearDecay(Schedule):
    """Go linearly from 1 to ``end_factor`` over ``total_epochs``."""

    name = "linear"

    def __init__(self, end_factor: float = 0.0, total_epochs: float | None = None):
        self.end_factor = check_float_range("end_factor", end_factor, 0.0, 1.0)
        self.total_epochs = None if total_epochs is None else check_positive_float("total_epochs", total_epochs)

    def factor(self, epoch):
        t = min(epoch / self.total_epochs, 1.0) if self.total_epochs else 0.0
        return 1.0 + (self.end_factor - 1.0) * t

    def config(self):
        return {"name": self.name, "end_factor": self.end_factor, "total_epochs": self.total_epochs}


class CosineDecay(Schedule):
    """Half a cosine from 1 to ``min_factor`` over ``total_epochs`` (SGDR without restarts)."""

    name = "cosine"

    def __init__(self, min_factor: float = 0.0, total_epochs: float | None = None):
        self.min_factor = check_float_range("min_factor", min_factor, 0.0, 1.0)
        self.total_epochs = None if total_epochs is None else check_positive_float("total_epochs", total_epochs)

    def factor(self, epoch):
        t = min(epoch / self.total_epochs, 1.0) if self.total_epochs else 0.0
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))

    def config(self):
        return {"name": self.name, "min_factor": self.min_factor, "total_epochs": self.total_epochs}


def from_config(kind: str, cls, kwargs: dict):
    """``cls(**kwargs)``, with an unknown or missing keyword reported as a DensennError."""
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise DensennError(f"bad {kind} config for {cls.__name__}: {exc}") from None


SCHEDULES = {"constant": Constant, "step": StepDecay, "linear": LinearDecay, "cosine": CosineDecay}


def get_schedule(spec) -> Schedule:
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        name = check_choice("schedule", spec.pop("name", None), SCHEDULES)
        return from_config("schedule", SCHEDULES[name], spec)
    check_choice("schedule", spec, SCHEDULES)
    return SCHEDULES[spec]()


