"""Optimizers (SGD with momentum/Nesterov, Adam, AdamW) and learning-rate schedules.

An optimizer holds its hyper-parameters and, once bound to a network's
parameters, the state buffers it needs (velocity; first and second moments) on
the network's engine. ``step`` runs one update per parameter through the
engine's fused update kernel; nothing is allocated per step. L2 weight decay is
applied to weights only, not biases.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from densenn.errors import (
    DensennError,
    check_choice,
    check_float_range,
    check_positive_float,
    check_positive_int,
    describe,
)
from densenn.kernels.ops import Map


# -- learning-rate schedules ---------------------------------------------------------
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


def _from_config(kind: str, cls, kwargs: dict):
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
        return _from_config("schedule", SCHEDULES[name], spec)
    check_choice("schedule", spec, SCHEDULES)
    return SCHEDULES[spec]()


# -- the update operations (see densenn.kernels.ops) -----------------------------------
def _sgd_np(engine, arrays, scalars, work):
    (w, g), (lr, wd) = arrays, scalars
    # two BLAS axpys, which the BLAS spreads over its threads: twice as fast as a
    # one-thread fused loop for large layers
    if wd:
        engine.axpy(wd, w, g)
    engine.axpy(-lr, g, w)


def _momentum_np(nesterov: bool):
    def run(engine, arrays, scalars, work):
        (w, g, v), (lr, mu, wd, _) = arrays, scalars
        if wd:
            engine.axpy(wd, w, g)
        np.multiply(v, mu, out=v)
        engine.axpy(-lr, g, v)
        if nesterov:
            engine.axpy(mu, v, w)
            engine.axpy(-lr, g, w)
        else:
            engine.axpy(1.0, v, w)
    return run


def _adam_np(engine, arrays, scalars, work):
    (w, g, m, v), (step, eps, beta1, beta2, omb1, omb2, wd, keep, _) = arrays, scalars
    if wd:
        engine.axpy(wd, w, g)
    if keep != 1.0:
        np.multiply(w, keep, out=w)
    np.multiply(m, beta1, out=m)
    engine.axpy(omb1, g, m)
    np.multiply(v, beta2, out=v)
    np.square(g, out=g)                     # g is spent once m has it
    engine.axpy(omb2, g, v)
    np.sqrt(v, out=work)
    np.add(work, eps, out=work)
    np.divide(m, work, out=work)
    engine.axpy(-step, work, w)


# Moments and velocities below the smallest normal number (tiny) are flushed to zero: the
# first moment of a weight whose gradient stays zero (a dead ReLU, an always-black pixel)
# decays as 0.9^t into subnormal numbers within a few epochs, and x86 computes on those a
# hundred times slower; on MNIST they made every epoch slower than the one before.
SGD_UPDATE = Map("sgd", "w g", writes="w", scalars="lr wd", body="w = w - lr * (g + wd * w)",
                 cpu="numpy", cpu_blocks=False, numpy=_sgd_np)
MOMENTUM_UPDATE = Map("sgd_momentum", "w g v", writes="w v", scalars="lr mu wd tiny", numpy=_momentum_np(False),
                      body="""
gi = g + wd * w
v = mu * v - lr * gi
v = 0 if abs(v) < tiny else v
w = w + v
""")
NESTEROV_UPDATE = Map("sgd_nesterov", "w g v", writes="w v", scalars="lr mu wd tiny", numpy=_momentum_np(True),
                      body="""
gi = g + wd * w
v = mu * v - lr * gi
v = 0 if abs(v) < tiny else v
w = w + (mu * v - lr * gi)
""")
#: step and eps carry the bias correction; keep = 1 - decay is AdamW's decoupled decay
ADAM_UPDATE = Map("adam", "w g m v", writes="w m v", scalars="step eps beta1 beta2 omb1 omb2 wd keep tiny",
                  numpy=_adam_np, body="""
gi = g + wd * w
m = beta1 * m + omb1 * gi
v = beta2 * v + omb2 * gi * gi
m = 0 if abs(m) < tiny else m
v = 0 if v < tiny else v
w = keep * w - step * m / (sqrt(v) + eps)
""")

_TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): float(np.finfo(np.float64).tiny)}


def sgd_update(engine, w, g, v, lr, momentum, nesterov, weight_decay):
    """One SGD step on w (overwrites w, v and g): g += wd·w; v = μv - lr·g; w += v (or,
    Nesterov, w += μv - lr·g); plain SGD (v None) w -= lr·g."""
    if v is None:
        engine.map(SGD_UPDATE, (w, g), (lr, weight_decay))
    else:
        op = NESTEROV_UPDATE if nesterov else MOMENTUM_UPDATE
        engine.map(op, (w, g, v), (lr, momentum, weight_decay, _TINY[w.dtype]))
    return w


def adam_update(engine, w, g, m, v, step, eps, beta1, beta2, weight_decay, decay, work):
    """One Adam step (overwrites w, g, m, v, work): g += wd·w (L2); m = β1m + (1-β1)g;
    v = β2v + (1-β2)g²; w -= step · m / (√v + eps) - decay · w, where ``step`` and ``eps``
    already carry the bias correction and ``decay`` is AdamW's lr·wd."""
    engine.map(ADAM_UPDATE, (w, g, m, v), (step, eps, beta1, beta2, 1.0 - beta1, 1.0 - beta2, weight_decay,
                                            1.0 - decay, _TINY[w.dtype]), work=work)
    return w


# -- optimizers --------------------------------------------------------------------
class Optimizer:
    """Base: a base learning rate, a schedule, L2 weight decay, and bound state."""

    name = ""

    def __init__(self, lr: float, weight_decay: float = 0.0, schedule=None):
        self.lr = check_positive_float("learning rate (lr)", lr)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
                or not np.isfinite(weight_decay) or weight_decay < 0:
            raise DensennError(f"weight_decay must be a non-negative number, got {describe(weight_decay)}")
        self.weight_decay = float(weight_decay)
        self.schedule = get_schedule(schedule)
        self.engine: Any = None
        self.state: list[list] = []   # per parameter, the buffers this optimizer keeps
        self._shapes: list[tuple] = []
        self.t = 0                    # updates done

    # -- binding ---------------------------------------------------------------
    def slots(self) -> int:
        """How many parameter-shaped buffers each parameter needs."""
        return 0

    def bind(self, engine, params, dtype) -> Optimizer:
        """Allocate state for ``params`` (a list of engine arrays). Idempotent for the same params."""
        shapes = [tuple(p.shape) for p in params]
        if self.engine is engine and self._shapes == shapes:
            return self     # same network again: keep momentum/moments
        self.release()
        self.engine = engine
        self._shapes = shapes
        self.state = [[engine.zeros(p.shape, dtype) for _ in range(self.slots())] for p in params]
        return self

    def nbytes(self) -> int:
        return sum(self.engine.nbytes(buf) for bufs in self.state for buf in bufs) if self.engine else 0

    def release(self):
        if self.engine is not None:
            for bufs in self.state:
                for buf in bufs:
                    self.engine.release(buf)
        self.state = []
        self._shapes = []
        self.engine = None

    def reset(self):
        """Forget momentum/moments (zero the state) and the step count."""
        for bufs in self.state:
            for buf in bufs:
                self.engine.fill(buf, 0.0)
        self.t = 0

    # -- stepping --------------------------------------------------------------
    def current_lr(self, epoch: float) -> float:
        return self.lr * self.schedule.factor(epoch)

    def step(self, params, grads, decays, epoch: float = 0.0):
        """Update every parameter in place from its gradient (grads are overwritten).

        ``decays[i]`` says whether weight decay applies to parameter i.
        """
        self.t += 1
        lr = self.current_lr(epoch)
        for i, (p, g, decay) in enumerate(zip(params, grads, decays)):
            self._update(i, p, g, lr, self.weight_decay if decay else 0.0)

    def _update(self, i, p, g, lr, weight_decay):
        raise NotImplementedError  # abstract

    #: whether every step's update folds into the ∇w GEMMs (``gemm_update`` gives a pair),
    #: so that training needs no ∇w buffers
    folds_into_gemm: Any = False

    def gemm_update(self, epoch: float = 0.0):
        """``(alpha, beta)`` when this step's update is w ← beta·w + alpha·∇w for every
        weight and b ← b + alpha·∇b for every bias, else None.

        A pair lets the training network fold the update into the ∇w GEMM (no ∇w
        buffer written, no update pass); returning it counts the step, as ``step`` would.
        """
        return None

    def config(self) -> dict:
        raise NotImplementedError  # abstract

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, schedule=None):
        super().__init__(lr, weight_decay, schedule)
        self.momentum = check_float_range("momentum", momentum, 0.0, 1.0, high_open=True)
        if nesterov and self.momentum == 0.0:
            raise DensennError("nesterov=True needs momentum > 0, got momentum=0")
        self.nesterov = bool(nesterov)

    def slots(self):
        return 1 if self.momentum else 0

    @property
    def folds_into_gemm(self):
        return not self.momentum

    def gemm_update(self, epoch: float = 0.0):
        # plain SGD with L2 decay: w - lr·(∇w + λ·w) = (1 - lr·λ)·w - lr·∇w
        if not self.folds_into_gemm:
            return None
        self.t += 1
        lr = self.current_lr(epoch)
        return -lr, 1.0 - lr * self.weight_decay

    def _update(self, i, p, g, lr, weight_decay):
        v = self.state[i][0] if self.momentum else None
        sgd_update(self.engine, p, g, v, lr, self.momentum, self.nesterov, weight_decay)

    def config(self):
        return {"name": self.name, "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "schedule": self.schedule.config()}


class Adam(Optimizer):
    """Adam (Kingma & Ba); ``decoupled=True`` gives AdamW's decoupled weight decay."""

    name = "adam"

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, schedule=None):
        super().__init__(lr, weight_decay, schedule)
        self.beta1 = check_float_range("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_float_range("beta2", beta2, 0.0, 1.0, high_open=True)
        self.eps = check_positive_float("eps", eps)
        self.decoupled = bool(decoupled)
        self._work: Any = None
        self._views: list = []

    def slots(self):
        return 2

    def bind(self, engine, params, dtype):
        super().bind(engine, params, dtype)
        # one scratch buffer as large as the largest parameter, viewed per parameter
        size = max(int(np.prod(p.shape)) for p in params)
        if self._work is None or self._work.shape[0] < size:
            self._work = engine.empty((size,), dtype)
        self._views = [self._work[: int(np.prod(p.shape))].reshape(p.shape) for p in params]
        return self

    def release(self):
        if self._work is not None and self.engine is not None:
            self.engine.release(self._work)
        self._work = None
        self._views = []
        super().release()

    def nbytes(self):
        work = self.engine.nbytes(self._work) if self._work is not None and self.engine else 0
        return super().nbytes() + work

    def step(self, params, grads, decays, epoch: float = 0.0):
        # bias correction folded into the step and eps, as in PyTorch's formulation
        t = self.t + 1
        c1 = 1.0 - self.beta1 ** t
        c2 = math.sqrt(1.0 - self.beta2 ** t)
        lr = self.current_lr(epoch)
        self._step_size = lr * c2 / c1
        self._eps_t = self.eps * c2
        self._lr = lr
        super().step(params, grads, decays, epoch)

    def _update(self, i, p, g, lr, weight_decay):
        m, v = self.state[i]
        work = self._views[i]
        l2 = 0.0 if self.decoupled else weight_decay
        decay = lr * weight_decay if self.decoupled else 0.0
        adam_update(self.engine, p, g, m, v, self._step_size, self._eps_t, self.beta1, self.beta2, l2, decay, work)

    def config(self):
        return {"name": self.name, "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay, "decoupled": self.decoupled,
                "schedule": self.schedule.config()}


def AdamW(lr: float = 1e-3, weight_decay: float = 1e-2, **kwargs) -> Adam:
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""
    return Adam(lr, weight_decay=weight_decay, decoupled=True, **kwargs)


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
        return _from_config("optimizer", _REGISTERED.get(name) or (SGD if name == "sgd" else Adam), spec)
    check_choice("optimizer", spec, OPTIMIZERS)
    kwargs: dict[str, Any] = {} if lr is None else {"lr": lr}
    if spec == "momentum":
        return SGD(momentum=0.9, **kwargs)
    if spec == "nesterov":
        return SGD(momentum=0.9, nesterov=True, **kwargs)
    if spec == "adamw":
        return AdamW(**kwargs)
    return OPTIMIZERS[spec](**kwargs)
