"""The optimizer base: a base learning rate, a schedule, L2 weight decay, gradient clipping
by the global norm, and state bound to a network's parameters on its engine. A new
optimizer is one module: its update declared as a Map (see densenn.kernels.ops) and an
Optimizer subclass that runs it."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from densenn.errors import DensennError, check_positive_float, describe
from densenn.optim.clip import BIGGEST, CLIP_FACTOR, CLIP_GRADIENT, SUM_SQUARES, check_clipnorm
from densenn.optim.schedules import get_schedule

# Moments and velocities below the smallest normal number (tiny) are flushed to zero: the
# first moment of a weight whose gradient stays zero (a dead ReLU, an always-black pixel)
# decays as 0.9^t into subnormal numbers within a few epochs, and x86 computes on those a
# hundred times slower; on MNIST they made every epoch slower than the one before.
TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): float(np.finfo(np.float64).tiny)}


class Optimizer:
    """Base: a base learning rate, a schedule, L2 weight decay, gradient clipping, and bound state.

    ``clipnorm`` (None: off) scales all gradients together by clipnorm/‖g‖₂ whenever their
    global L2 norm ‖g‖₂ (over every parameter, before weight decay, which is not clipped)
    exceeds it; see densenn.optim.clip. ``last_grad_norm()`` reads the last step's ‖g‖₂.
    """

    name = ""

    #: whether ``_update`` applies the clip factor itself, its update kernel reading
    #: ``self.clip`` as a ``scalar`` array; otherwise ``step`` scales the gradients by it
    #: first (one more pass over each)
    applies_clip = False

    def __init__(self, lr: float, weight_decay: float = 0.0, schedule=None, clipnorm: float | None = None):
        self.lr = check_positive_float("learning rate (lr)", lr)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
                or not np.isfinite(weight_decay) or weight_decay < 0:
            raise DensennError(f"weight_decay must be a non-negative number, got {describe(weight_decay)}")
        self.weight_decay = float(weight_decay)
        self.schedule = get_schedule(schedule)
        self.clipnorm = clipnorm
        #: this step's clip factor f, a one-element engine array (None when not clipping)
        self.clip: Any = None
        self._norm: Any = None        # [Σ g², f] on the engine, made by bind when clipping
        self._norm_views: tuple = ()  # its two elements, as one-element arrays
        self._measured = False        # whether _norm holds a step's Σ g²
        self.engine: Any = None
        self.state: list[list] = []   # per parameter, the buffers this optimizer keeps
        self._shapes: list[tuple] = []
        self.t = 0                    # updates done

    @property
    def clipnorm(self) -> float | None:
        """The largest global L2 norm of the gradients a step uses as it is (None: no clipping)."""
        return self._clipnorm

    @clipnorm.setter
    def clipnorm(self, value):
        self._clipnorm = check_clipnorm(value)

    # -- binding ---------------------------------------------------------------
    def slots(self) -> int:
        """How many parameter-shaped buffers each parameter needs."""
        return 0

    def bind(self, engine, params, dtype) -> Optimizer:
        """Allocate state for ``params`` (a list of engine arrays). Idempotent for the same params."""
        shapes = [tuple(p.shape) for p in params]
        if self.engine is engine and self._shapes == shapes:
            self._bind_clip(dtype)
            return self     # same network again: keep momentum/moments
        self.release()
        self.engine = engine
        self._shapes = shapes
        self.state = [[engine.zeros(p.shape, dtype) for _ in range(self.slots())] for p in params]
        self._bind_clip(dtype)
        return self

    def _bind_clip(self, dtype):
        # made once clipnorm is set: at bind, or at the first step after clipnorm was set later
        if self._clipnorm is not None and self._norm is None:
            self._norm = self.engine.zeros((2,), dtype)
            self._norm_views = (self._norm[0:1], self._norm[1:2])
            self._measured = False

    def nbytes(self) -> int:
        if not self.engine:
            return 0
        norm = self.engine.nbytes(self._norm) if self._norm is not None else 0
        return norm + sum(self.engine.nbytes(buf) for bufs in self.state for buf in bufs)

    def release(self):
        if self.engine is not None:
            for bufs in self.state:
                for buf in bufs:
                    self.engine.release(buf)
            if self._norm is not None:
                self.engine.release(self._norm)
        self._norm = self.clip = None
        self._norm_views = ()
        self._measured = False
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

        ``decays[i]`` says whether weight decay applies to parameter i. With ``clipnorm``,
        the gradients' global norm is measured first and ``self.clip`` holds the factor.
        """
        self.t += 1
        lr = self.current_lr(epoch)
        self.clip = None if self._clipnorm is None else self._clip_factor(grads, self._clipnorm)
        for i, (p, g, decay) in enumerate(zip(params, grads, decays)):
            self._update(i, p, g, lr, self.weight_decay if decay else 0.0)

    def _clip_factor(self, grads, clipnorm: float):
        """f = min(1, clipnorm/‖g‖₂) into the engine's one-element buffer, which it returns
        (overwrites the buffer; without ``applies_clip``, also grads, scaled by f)."""
        e = self.engine
        if self._norm is None:      # clipnorm set after bind
            self._bind_clip(grads[0].dtype)
        sumsq, f = self._norm_views
        e.fill(sumsq, 0.0)
        for g in grads:
            e.reduce(SUM_SQUARES, (g,), (), sumsq)
        e.map(CLIP_FACTOR, (sumsq, f), (min(clipnorm, BIGGEST[f.dtype]),))
        self._measured = True
        if not self.applies_clip:
            for g in grads:
                e.map(CLIP_GRADIENT, (g, f))
        return f

    def last_grad_norm(self) -> float | None:
        """The global L2 norm of the last step's gradients, before clipping (read from the
        engine: one host read per call), or None when no step has measured it since the
        optimizer was bound (clipnorm unset; a plain SGD step folded into the GEMMs)."""
        if not self._measured or self._norm is None:
            return None
        return math.sqrt(float(self.engine.to_host(self._norm)[0]))

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
        config = self.config()
        if self._clipnorm is not None and "clipnorm" not in config:     # a subclass's own config
            config = {**config, "clipnorm": self._clipnorm}
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "name")
        return f"{type(self).__name__}({args})"
