"""Adam (Kingma & Ba) and AdamW's decoupled weight decay (Loshchilov & Hutter)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from densenn.errors import check_float_range, check_positive_float
from densenn.kernels.ops import Map
from densenn.optim.base import TINY, Optimizer
from densenn.optim.clip import CLIPPED_G, clipped_numpy


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


# moments below the smallest normal number are flushed to zero (see densenn.optim.base.TINY);
# the gradient is {g}: g itself, or with clipnorm f·g (see densenn.optim.clip)
ADAM_BODY = """
gi = {g} + wd * w
m = beta1 * m + omb1 * gi
v = beta2 * v + omb2 * gi * gi
m = 0 if abs(m) < tiny else m
v = 0 if v < tiny else v
w = keep * w - step * m / (sqrt(v) + eps)
"""
ADAM_UPDATE = Map("adam", "w g m v", writes="w m v", scalars="step eps beta1 beta2 omb1 omb2 wd keep tiny",
                  numpy=_adam_np, body=ADAM_BODY.format(g="g"))
#: the same with the clip factor f (a scalar array), for clipnorm
ADAM_CLIP_UPDATE = Map("adam_clip", "w g m v f:scalar", writes="w m v",
                       scalars="step eps beta1 beta2 omb1 omb2 wd keep tiny", numpy=clipped_numpy(_adam_np),
                       body=ADAM_BODY.format(g=CLIPPED_G))


def adam_update(engine, w, g, m, v, step, eps, beta1, beta2, weight_decay, decay, work, f=None):
    """One Adam step (overwrites w, g, m, v, work): g += wd·w (L2); m = β1m + (1-β1)g;
    v = β2v + (1-β2)g²; w -= step · m / (√v + eps) - decay · w, where ``step`` and ``eps``
    already carry the bias correction and ``decay`` is AdamW's lr·wd. With ``f`` (the clip
    factor, a one-element engine array) the step takes f·g for g."""
    scalars = (step, eps, beta1, beta2, 1.0 - beta1, 1.0 - beta2, weight_decay, 1.0 - decay, TINY[w.dtype])
    if f is None:
        engine.map(ADAM_UPDATE, (w, g, m, v), scalars, work=work)
    else:
        engine.map(ADAM_CLIP_UPDATE, (w, g, m, v, f), scalars, work=work)
    return w



class Adam(Optimizer):
    """Adam (Kingma & Ba); ``decoupled=True`` gives AdamW's decoupled weight decay."""

    name = "adam"
    applies_clip = True

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, schedule=None, clipnorm: float | None = None):
        super().__init__(lr, weight_decay, schedule, clipnorm)
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
        adam_update(self.engine, p, g, m, v, self._step_size, self._eps_t, self.beta1, self.beta2, l2, decay, work,
                    self.clip)

    def config(self):
        return {"name": self.name, "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay, "decoupled": self.decoupled,
                "schedule": self.schedule.config(), "clipnorm": self.clipnorm}


def AdamW(lr: float = 1e-3, weight_decay: float = 1e-2, **kwargs) -> Adam:
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""
    return Adam(lr, weight_decay=weight_decay, decoupled=True, **kwargs)
