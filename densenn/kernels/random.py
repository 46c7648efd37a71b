"""Uniform random numbers made on the engine, the same on every engine.

A counter-based generator: element ``i`` of a draw with key ``k`` is

    u(k, i) = (h >> 8) · 2⁻²⁴,   h = mix((i · 0x9E3779B9 mod 2³²) xor k)

where ``mix`` is Chris Wellons' "lowbias32" integer hash (two multiply-xorshift
rounds; every output bit depends on every input bit). ``u`` lies in [0, 1) on a grid
of 2⁻²⁴, exact in float32 and float64, so the C kernel of the GPU engines, the CPU
engine's Numba loop and its NumPy form give bit-identical draws: a network trained
with dropout follows the same masks on every engine. Nothing is kept on the device
between draws (no generator state to copy or checkpoint): a draw is a function of its
key, and ``key(seed, stream, counter)`` (on the host, a few integer operations) gives
each layer and step its own.
"""
from __future__ import annotations

import math

import numpy as np

PHI = 0x9E3779B9
M1 = 0x7FEB352D
M2 = 0x846CA68B
MASK = 0xFFFFFFFF
#: 2⁻²⁴: the top 24 bits of the hash as a fraction
SCALE = 5.9604644775390625e-08


def mix(x: int) -> int:
    """lowbias32 of a 32-bit integer (Python ints, on the host)."""
    x &= MASK
    x ^= x >> 16
    x = (x * M1) & MASK
    x ^= x >> 15
    x = (x * M2) & MASK
    x ^= x >> 16
    return x


def key(seed: int, stream: int, counter: int) -> int:
    """The 32-bit key of draw ``counter`` of ``stream`` (a layer) under ``seed``."""
    return mix(mix(mix(seed & MASK) ^ (seed >> 32) ^ stream) ^ counter ^ (counter >> 32))


#: the GPU kernel (see densenn.kernels.gpu: one text for OpenCL C and CUDA C)
C_SOURCE = """
/* out[i] = u(key, i): see densenn/kernels/random.py. */
KERNEL uniform(GLOBAL T *out, const I out0, const unsigned int key, const I n)
{
    FOR_EACH(i, n) {
        unsigned int h = ((unsigned int)i * 0x9E3779B9u) ^ key;
        h ^= h >> 16;
        h *= 0x7FEB352Du;
        h ^= h >> 15;
        h *= 0x846CA68Bu;
        h ^= h >> 16;
        out[out0 + i] = (T)(h >> 8) * (T)5.9604644775390625e-08;
    }
}
"""

_PHI, _M1, _M2, _MASK = np.uint64(PHI), np.uint64(M1), np.uint64(M2), np.uint64(MASK)
_S8, _S15, _S16 = np.uint64(8), np.uint64(15), np.uint64(16)


def python_fill(out, k):
    """out[i] = u(k, i) for a flat ``out``: plain Python over uint64 (each product masked to
    32 bits), written for Numba to compile (the CPU engine's fused form)."""
    kk = np.uint64(k)
    for i in range(out.shape[0]):
        h = ((np.uint64(i) * _PHI) & _MASK) ^ kk
        h ^= h >> _S16
        h = (h * _M1) & _MASK
        h ^= h >> _S15
        h = (h * _M2) & _MASK
        h ^= h >> _S16
        out[i] = (h >> _S8) * SCALE


def numpy_fill(out, k, index, h, t):
    """out = u(k, index) with NumPy, allocation-free: ``index`` holds 0..n-1 and ``h``, ``t``
    are scratch, all uint64 of out's size (flat). Overwrites out, h and t."""
    np.multiply(index, _PHI, out=h)
    np.bitwise_and(h, _MASK, out=h)
    np.bitwise_xor(h, np.uint64(k), out=h)
    for shift, factor in ((_S16, _M1), (_S15, _M2)):
        np.right_shift(h, shift, out=t)
        np.bitwise_xor(h, t, out=h)
        np.multiply(h, factor, out=h)
        np.bitwise_and(h, _MASK, out=h)
    np.right_shift(h, _S16, out=t)
    np.bitwise_xor(h, t, out=h)
    np.right_shift(h, _S8, out=h)
    np.copyto(out, h, casting="unsafe")     # exact: below 2²⁴ (a cast in a ufunc would buffer)
    np.multiply(out, SCALE, out=out)
    return out


def grid_threshold(p: float) -> float:
    """The smallest value of the draws' grid (multiples of 2⁻²⁴) not below ``p``: u < p exactly
    when u < grid_threshold(p), and the threshold is exact in float32, so every engine and
    dtype draws the same comparison."""
    return math.ceil(p / SCALE) * SCALE
