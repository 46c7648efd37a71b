"""GELU (exact and tanh forms), SiLU, Mish and SELU, declared as densenn.nn.activation's are.

Each is two expressions (``f``, ``df``) that the GPU engines compile to C and the CPU engine
to a Numba loop, plus allocation-free NumPy kernels; ``cpu`` names the faster CPU form.
Registered among the activations on import (densenn imports this module right after
densenn.nn.activation).

As there, |z| up to 1e4 gives no overflow warning and no NaN, NaN in gives NaN out, and
±inf give the limits (f(-inf) is 0, not -inf·0). Each formula is exact to the last bit
beyond a threshold (a branch in the expressions, a clip in the kernels), and only below it
calls exp, log1p, tanh or erf:

* gelu = z·Φ(z) = ½z(1 + erf(z/√2)), gelu' = Φ(z) + z·φ(z); the erf form (as PyTorch's),
  whose 1 + erf(·) rounds to an absolute, not relative, error in the left tail.
* gelu_tanh = z·σ(v), v = 2·√(2/π)(z + 0.044715z³): the tanh approximation
  ½z(1 + tanh(v/2)); gelu_tanh' = σ(v)(1 + z·v'·(1 - σ(v))).
* silu = z·σ(z), silu' = σ(z)(1 + z(1 - σ(z))).

For these two σ is not ½tanh(·/2) + ½ (Sigmoid's expression): PoCL's float tanh returns
values an ulp beyond ±1, and z·(1 + tanh) or z·(1 - tanh²) made that an error growing with
|z| (3e-5 at z = -1000). The expressions write σ(x) as 1/(1 + e^-x) for x >= 0 and
e^x/(1 + e^x) below (exp of x <= 0 only, exact in both tails); the kernels use
1/(1 + e^-x) with the overflow to inf as the exact limit, as Sigmoid's kernel does.
* mish = z·tanh(softplus(z)) = z·n/(n + 2), n = e^z(e^z + 2), exp of z ≤ 30 only: the
  rational form needs one exp, no log and no tanh, and has no cancellation in either tail;
  mish' = (n + 4z·e^z(1 + e^z)/(n + 2))/(n + 2) = T + z·σ(z)(1 - T²), T = tanh(softplus(z)).
* selu = λz (z > 0), λα(e^z - 1) (z ≤ 0), λ = 1.0507009873554805, α = 1.6732632423543772,
  exponentiating only min(z, 0), like ELU.

The CPU form: NumPy's SIMD tanh and exp are 5 to 45 times faster than a Numba loop calling
libm's (measured on AVX-512, float32), so gelu_tanh, silu, mish and selu run their NumPy
kernels; scipy's erf is not SIMD and is slower than libm's, so gelu runs the Numba loop.
A delta kernel folds the incoming signal into one factor early, freeing its array as the
third buffer the precise formulas need; the prime kernels of those run the delta kernel
with a signal of ones, in pieces of z that borrow two parts of the working memory.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

from densenn.nn.activation import Activation, _expit, register_activation

_K = 0.7071067811865476          # 1/√2
_PHI = 0.3989422804014327        # 1/√(2π)
_C = 0.7978845608028654          # √(2/π)
_A, _B = 2 * _C, 2 * _C * 0.044715      # v = A·z + B·z³ = 2·√(2/π)(z + 0.044715 z³)
SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772
_LA = SELU_LAMBDA * SELU_ALPHA


def _scratch(z, work):
    return np.empty_like(z) if work is None else work


def _prime_by_delta(act: Activation, z, work):
    """z = f'(z) as ``act.np_delta`` with a signal of ones. np_delta needs three buffers: z
    runs in at most three pieces of half its size, each taking the ones and the scratch from
    two disjoint halves of ``work`` (allocation-free; without work or for a single element
    it allocates, as every kernel does without work)."""
    if (work is None or z.size < 2 or work.size < z.size or not z.flags.c_contiguous
            or not work.flags.c_contiguous):
        act.np_delta(z, np.ones_like(z), np.empty_like(z))
        return z
    flat, spare = z.reshape(-1), work.reshape(-1)
    half = flat.size // 2
    for lo in range(0, flat.size, half):
        piece = flat[lo:lo + half]
        ones, scratch = spare[:piece.size], spare[piece.size:2 * piece.size]
        ones.fill(1.0)
        act.np_delta(piece, ones, scratch)
    return z


class GELU(Activation):
    name = "gelu"
    work_kind = "full"
    f = f"0 if z < -40 else 0.5 * z * (1 + erf({_K!r} * z))"
    df = f"0.5 * (1 + erf({_K!r} * z)) + (0 if abs(z) > 40 else {_PHI!r} * z * exp(-0.5 * z * z))"

    def np_activ(self, z, a, work=None):
        work = _scratch(z, work)
        np.maximum(z, -40.0, out=work)        # -inf as -40, where f is already 0
        np.multiply(work, _K, out=a)
        erf(a, out=a)
        np.add(a, 1.0, out=a)
        np.multiply(work, 0.5, out=work)
        return np.multiply(a, work, out=a)

    def np_prime(self, z, work=None):
        work = _scratch(z, work)
        np.clip(z, -40.0, 40.0, out=work)      # w: beyond ±40, f' is 0 or 1 to the last bit
        np.square(work, out=z)
        np.multiply(z, -0.5, out=z)
        np.exp(z, out=z)
        np.multiply(z, _PHI, out=z)
        np.multiply(z, work, out=z)            # w·φ(w)
        np.multiply(work, _K, out=work)
        erf(work, out=work)
        np.add(work, 1.0, out=work)
        np.multiply(work, 0.5, out=work)       # Φ(w)
        return np.add(z, work, out=z)


_V = f"({_A!r} * z + {_B!r} * z * z * z)"       # v; v' = A + 3B·z²
_DV = f"({_A!r} + {3 * _B!r} * z * z)"


class GELUTanh(Activation):
    name = "gelu_tanh"
    work_kind = "full"
    cpu = "numpy"
    # σ(v) as 1/(1 + e^-v) for z >= 0 and e^v/(1 + e^v) below: exp of v <= 0 only
    f = f"z / (1 + exp(-{_V})) if z >= 0 else (0 if z < -25 else z * exp({_V}) / (1 + exp({_V})))"
    df = (f"(1 if z > 25 else (1 + z * {_DV} * exp(-{_V}) / (1 + exp(-{_V}))) / (1 + exp(-{_V}))) if z >= 0 "
          f"else (0 if z < -25 else exp({_V}) / (1 + exp({_V})) * (1 + z * {_DV} / (1 + exp({_V}))))")

    @staticmethod
    def _v(w, out):
        """out = v(w) = A·w + B·w³ (``out`` not ``w``)."""
        np.square(w, out=out)
        np.multiply(out, _B, out=out)
        np.add(out, _A, out=out)
        return np.multiply(out, w, out=out)

    def np_activ(self, z, a, work=None):
        work = _scratch(z, work)
        np.clip(z, -25.0, 25.0, out=work)      # beyond ±25, σ(v) is 0 or 1 to the last bit
        _expit(self._v(work, a), a)
        np.maximum(z, -25.0, out=work)         # -inf as -25, where σ(v) is 0
        return np.multiply(a, work, out=a)

    def np_prime(self, z, work=None):
        return _prime_by_delta(self, z, work)

    def np_delta(self, z, a, work=None):
        work = _scratch(z, work)
        np.clip(z, -25.0, 25.0, out=z)         # w
        self._v(z, work)                       # v
        np.multiply(z, -2.0 * _A / 3.0, out=z)
        np.add(z, work, out=z)                 # w·v'/3 = v - (2A/3)·w: both terms of one sign
        _expit(work, work)                     # σ(v)
        np.multiply(a, work, out=a)            # g·σ(v)
        np.subtract(1.0, work, out=work)       # 1 - σ(v)
        np.multiply(z, work, out=z)
        np.multiply(z, 3.0, out=z)
        np.add(z, 1.0, out=z)                  # 1 + w·v'·(1 - σ(v))
        return np.multiply(z, a, out=z)


class SiLU(Activation):
    name = "silu"
    work_kind = "full"
    cpu = "numpy"
    # σ as 1/(1 + e^-z) for z >= 0 and e^z/(1 + e^z) below: exp of z <= 0 only
    f = "z / (1 + exp(-z)) if z >= 0 else (0 if z < -1000 else z * exp(z) / (1 + exp(z)))"
    df = ("(1 if z > 1000 else (1 + z * exp(-z) / (1 + exp(-z))) / (1 + exp(-z))) if z >= 0 "
          "else (0 if z < -1000 else exp(z) / (1 + exp(z)) * (1 + z / (1 + exp(z))))")

    def np_activ(self, z, a, work=None):
        work = _scratch(z, work)
        _expit(z, a)
        np.maximum(z, -1000.0, out=work)       # -inf as -1000, where σ is 0
        return np.multiply(a, work, out=a)

    def np_prime(self, z, work=None):
        return _prime_by_delta(self, z, work)

    def np_delta(self, z, a, work=None):
        work = _scratch(z, work)
        np.clip(z, -1000.0, 1000.0, out=z)     # w: beyond ±1000, f' is 0 or 1 to the last bit
        _expit(z, work)                        # σ
        np.multiply(a, work, out=a)            # g·σ
        np.subtract(1.0, work, out=work)       # 1 - σ: exact where σ >= ½, relative-precise below
        np.multiply(z, work, out=z)
        np.add(z, 1.0, out=z)                  # 1 + w(1 - σ)
        return np.multiply(z, a, out=z)


_E = "exp(z)"
_N = f"({_E} * ({_E} + 2))"                   # n = e^z(e^z + 2); tanh(softplus(z)) = n/(n + 2)


class Mish(Activation):
    name = "mish"
    work_kind = "full"
    cpu = "numpy"
    f = f"z if z > 30 else (0 if z < -1000 else z * {_N} / ({_N} + 2))"
    df = f"1 if z > 30 else (0 if z < -1000 else ({_N} + 4 * z * {_E} * (1 + {_E}) / ({_N} + 2)) / ({_N} + 2))"

    def np_activ(self, z, a, work=None):
        work = _scratch(z, work)
        np.minimum(z, 30.0, out=work)          # beyond 30, tanh(softplus) is 1 to the last bit
        np.exp(work, out=a)
        np.add(a, 2.0, out=work)
        np.multiply(work, a, out=work)         # n
        np.add(work, 2.0, out=a)
        np.divide(work, a, out=a)              # T = n/(n + 2)
        np.maximum(z, -1000.0, out=work)       # -inf as -1000, where T is 0
        return np.multiply(a, work, out=a)

    def np_prime(self, z, work=None):
        return _prime_by_delta(self, z, work)

    def np_delta(self, z, a, work=None):
        work = _scratch(z, work)
        np.clip(z, -1000.0, 30.0, out=z)       # w
        _expit(z, work)
        np.multiply(work, z, out=work)         # w·σ(w)
        np.exp(z, out=z)
        np.log1p(z, out=z)
        np.tanh(z, out=z)                      # T = tanh(softplus(w))
        np.multiply(work, a, out=work)         # g·w·σ
        np.multiply(a, z, out=a)               # g·T
        np.square(z, out=z)
        np.subtract(1.0, z, out=z)             # 1 - T²
        np.multiply(z, work, out=z)
        return np.add(z, a, out=z)


class SELU(Activation):
    name = "selu"
    work_kind = "full"
    cpu = "numpy"
    f = f"{SELU_LAMBDA!r} * z if z > 0 else {_LA!r} * expm1(z)"
    df = f"{SELU_LAMBDA!r} if z > 0 else {_LA!r} * exp(z)"

    def np_activ(self, z, a, work=None):
        work = _scratch(z, work)
        # f = λ·max(z, 0) + λα·expm1(min(z, 0)): exponentiate only the non-positive part
        np.minimum(z, 0.0, out=work)
        np.expm1(work, out=work)
        np.multiply(work, _LA, out=work)
        np.maximum(z, 0.0, out=a)
        np.multiply(a, SELU_LAMBDA, out=a)
        return np.add(a, work, out=a)

    def np_prime(self, z, work=None):
        work = _scratch(z, work)
        # f' = λα·exp(min(z, 0)) + (λ - λα)·[z > 0], the constants in z's dtype so that the
        # two add up to λ exactly (their difference is exact: Sterbenz)
        la = z.dtype.type(_LA)
        np.minimum(z, 0.0, out=work)
        np.exp(work, out=work)
        np.multiply(work, la, out=work)
        np.heaviside(z, 0.0, out=z)
        np.multiply(z, z.dtype.type(SELU_LAMBDA) - la, out=z)
        return np.add(z, work, out=z)


for _cls in (GELU, GELUTanh, SiLU, Mish, SELU):
    register_activation(_cls)
