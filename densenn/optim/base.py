"""The optimizer base: a base learning rate, a schedule, L2 weight decay, and state bound
to a network's parameters on its engine. A new optimizer is one module: its update
declared as a Map (see densenn.kernels.ops) and an Optimizer subclass that runs it."""
from __future__ import annotations

from typing import Any

import numpy as np

from densenn.errors import DensennError, check_positive_float, describe
from densenn.optim.schedules import get_schedule

# Moments and velocities below the smallest normal number (tiny) are flushed to zero: the
# first moment of a weight whose gradient stays zero (a dead ReLU, an always-black pixel)
# decays as 0.9^t into subnormal numbers within a few epochs, and x86 computes on those a
# hundred times slower; on MNIST they made every epoch slower than the one before.
TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): float(np.finfo(np.float64).tiny)}


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
