"""Stochastic gradient descent, plain or with (Nesterov) momentum.

Plain SGD folds into the ∇w GEMM (see densenn.nn.dense.FoldedSGDDense); with momentum
it runs its declared update after the backward pass."""
from __future__ import annotations

import numpy as np

from densenn.errors import DensennError, check_float_range
from densenn.kernels.ops import Map
from densenn.optim.base import TINY, Optimizer
from densenn.optim.clip import CLIPPED_G, clipped_numpy


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


# the bodies take the gradient as {g}: g itself, or with clipnorm f·g (see densenn.optim.clip)
SGD_BODY = "w = w - lr * ({g} + wd * w)"
MOMENTUM_BODY = """
gi = {g} + wd * w
v = mu * v - lr * gi
v = 0 if abs(v) < tiny else v
w = w + v
"""
NESTEROV_BODY = """
gi = {g} + wd * w
v = mu * v - lr * gi
v = 0 if abs(v) < tiny else v
w = w + (mu * v - lr * gi)
"""

SGD_UPDATE = Map("sgd", "w g", writes="w", scalars="lr wd", body=SGD_BODY.format(g="g"),
                 cpu="numpy", cpu_blocks=False, numpy=_sgd_np)
MOMENTUM_UPDATE = Map("sgd_momentum", "w g v", writes="w v", scalars="lr mu wd tiny", numpy=_momentum_np(False),
                      body=MOMENTUM_BODY.format(g="g"))
NESTEROV_UPDATE = Map("sgd_nesterov", "w g v", writes="w v", scalars="lr mu wd tiny", numpy=_momentum_np(True),
                      body=NESTEROV_BODY.format(g="g"))
# the same with the clip factor f (a scalar array), for clipnorm
SGD_CLIP_UPDATE = Map("sgd_clip", "w g f:scalar", writes="w", scalars="lr wd", body=SGD_BODY.format(g=CLIPPED_G),
                      cpu="numpy", cpu_blocks=False, numpy=clipped_numpy(_sgd_np))
MOMENTUM_CLIP_UPDATE = Map("sgd_momentum_clip", "w g v f:scalar", writes="w v", scalars="lr mu wd tiny",
                           numpy=clipped_numpy(_momentum_np(False)), body=MOMENTUM_BODY.format(g=CLIPPED_G))
NESTEROV_CLIP_UPDATE = Map("sgd_nesterov_clip", "w g v f:scalar", writes="w v", scalars="lr mu wd tiny",
                           numpy=clipped_numpy(_momentum_np(True)), body=NESTEROV_BODY.format(g=CLIPPED_G))
#: step and eps carry the bias correction; keep = 1 - decay is AdamW's decoupled decay

def sgd_update(engine, w, g, v, lr, momentum, nesterov, weight_decay, f=None):
    """One SGD step on w (overwrites w, v and g): g += wd·w; v = μv - lr·g; w += v (or,
    Nesterov, w += μv - lr·g); plain SGD (v None) w -= lr·g. With ``f`` (the clip factor,
    a one-element engine array) the step takes f·g for g."""
    if f is not None:
        if v is None:
            engine.map(SGD_CLIP_UPDATE, (w, g, f), (lr, weight_decay))
        else:
            op = NESTEROV_CLIP_UPDATE if nesterov else MOMENTUM_CLIP_UPDATE
            engine.map(op, (w, g, v, f), (lr, momentum, weight_decay, TINY[w.dtype]))
        return w
    if v is None:
        engine.map(SGD_UPDATE, (w, g), (lr, weight_decay))
    else:
        op = NESTEROV_UPDATE if nesterov else MOMENTUM_UPDATE
        engine.map(op, (w, g, v), (lr, momentum, weight_decay, TINY[w.dtype]))
    return w



class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    name = "sgd"
    applies_clip = True

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, schedule=None, clipnorm: float | None = None):
        super().__init__(lr, weight_decay, schedule, clipnorm)
        self.momentum = check_float_range("momentum", momentum, 0.0, 1.0, high_open=True)
        if nesterov and self.momentum == 0.0:
            raise DensennError("nesterov=True needs momentum > 0, got momentum=0")
        self.nesterov = bool(nesterov)

    def slots(self):
        return 1 if self.momentum else 0

    @property
    def folds_into_gemm(self):
        # clipping needs every ∇w before any update: no folding then
        return not self.momentum and self.clipnorm is None

    def gemm_update(self, epoch: float = 0.0):
        # plain SGD with L2 decay: w - lr·(∇w + λ·w) = (1 - lr·λ)·w - lr·∇w
        if not self.folds_into_gemm:
            return None
        self.t += 1
        lr = self.current_lr(epoch)
        return -lr, 1.0 - lr * self.weight_decay

    def _update(self, i, p, g, lr, weight_decay):
        v = self.state[i][0] if self.momentum else None
        sgd_update(self.engine, p, g, v, lr, self.momentum, self.nesterov, weight_decay, self.clip)

    def config(self):
        return {"name": self.name, "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "schedule": self.schedule.config(), "clipnorm": self.clipnorm}
