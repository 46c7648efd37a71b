"""Gradient clipping by the global norm: the operations an optimizer runs for ``clipnorm``.

With g all parameters' gradients concatenated (before weight decay, which is not clipped)
and c the optimizer's ``clipnorm``, every gradient is scaled by

    f = c / ‖g‖₂  when ‖g‖₂ > c,  else 1

(Keras' ``global_clipnorm``; PyTorch's ``clip_grad_norm_`` divides by ‖g‖₂ + 1e-6 instead,
which makes its factor smaller by a relative 1e-6/‖g‖₂; here f is exactly 1 below c).

Each step, on the engine: Σ g² over every gradient into one element (``SUM_SQUARES``, one
reduction pass per parameter), f from it (``CLIP_FACTOR``, one element), and f read by the
optimizer's update kernel as a ``scalar`` array (see densenn.kernels.ops): no host round
trip and no extra pass over the parameters. ``CLIP_GRADIENT`` scales the gradients in
place for an optimizer whose update does not read f itself.

An infinite or NaN norm gives a NaN factor, so the step turns NaN (and fit's divergence
guard stops training) instead of silently becoming a zero step.
"""
from __future__ import annotations

import math

import numpy as np

from densenn.errors import DensennError, describe
from densenn.kernels.ops import Map, Sum

#: the largest finite number of each dtype: a clipnorm beyond it is passed as this (it can
#: only be exceeded by an infinite norm, whose factor is NaN either way)
BIGGEST = {np.dtype(np.float32): float(np.finfo(np.float32).max),
           np.dtype(np.float64): float(np.finfo(np.float64).max)}

#: the gradient as the update kernels read it when clipping: exactly g while f is 1, so that
#: an unreached clipnorm changes no bit of the step
CLIPPED_G = "(g if f == 1 else f * g)"


def check_clipnorm(clipnorm) -> float | None:
    """``clipnorm`` as a float: a positive finite number, or None (no clipping)."""
    if clipnorm is None:
        return None
    if isinstance(clipnorm, bool) or not isinstance(clipnorm, (int, float, np.floating, np.integer)) \
            or not math.isfinite(clipnorm) or clipnorm <= 0:
        raise DensennError(f"clipnorm must be a positive finite number or None, got {describe(clipnorm)}")
    return float(clipnorm)


def _sum_squares_np(engine, arrays, scalars, work):
    x = arrays[0].reshape(-1)
    # the BLAS's dot: no temporary (NumPy warns when it overflows, which makes the step NaN)
    return np.dot(x, x)


def _clip_factor_np(engine, arrays, scalars, work):
    (ss, f), (clipnorm,) = arrays, scalars
    # Python floats: an infinite or NaN norm raises no NumPy warning on the way to a NaN
    norm = math.sqrt(float(ss[0]))
    f[0] = (norm - norm) + (clipnorm / norm if norm > clipnorm else 1.0)


def _clip_gradient_np(engine, arrays, scalars, work):
    g, f = arrays[0], arrays[1][0]
    if f != 1:
        np.multiply(g, f, out=g)


#: acc[0] += Σ g²
SUM_SQUARES = Sum("sum_squares", "g", numpy=_sum_squares_np, body="term = g * g")
#: f = c/‖g‖ where ‖g‖ = √ss exceeds c = clipnorm, else 1; NaN for an infinite or NaN norm
#: (norm - norm is 0 for a finite norm, NaN otherwise)
CLIP_FACTOR = Map("clip_factor", "ss f", writes="f", scalars="clipnorm", numpy=_clip_factor_np, body="""
norm = sqrt(ss)
f = (norm - norm) + (clipnorm / norm if norm > clipnorm else 1)
""")
#: g = f·g, for optimizers whose update does not read f
CLIP_GRADIENT = Map("clip_gradient", "g f:scalar", writes="g", numpy=_clip_gradient_np, body=f"g = {CLIPPED_G}")


def clipped_numpy(run):
    """The NumPy form of a clipping update from ``run``, the form of the same update without
    the trailing ``f`` array: g (the second array) is scaled by f first (overwritten)."""
    def clipped(engine, arrays, scalars, work):
        f = arrays[-1][0]
        if f != 1:
            np.multiply(arrays[1], f, out=arrays[1])
        run(engine, arrays[:-1], scalars, work)
    return clipped
