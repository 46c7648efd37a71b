"""Gradient checking: backprop's gradients against central finite differences."""
from __future__ import annotations

import math

import numpy as np

from densenn.errors import check_positive_float, check_positive_int


def numerical_gradients(net, x, y, cost=None, eps: float = 1e-6, max_entries: int = 200, seed: int = 0,
                        sample_weight=None):
    """Central differences (C(θ+ε) - C(θ-ε)) / 2ε for (a sample of) every parameter, of the
    training-mode cost (``net.training_loss``: batch statistics, fixed dropout masks; the
    weighted mean with ``sample_weight``).

    Returns ``[(dw, db), ...]`` shaped like ``net.get_weights()`` and a matching
    list of boolean masks saying which entries were computed (all of them when a
    parameter has at most ``max_entries``; otherwise a random sample of that many).
    """
    eps = check_positive_float("eps", eps)
    max_entries = check_positive_int("max_entries", max_entries)
    rng = np.random.default_rng(seed)
    weights = net.get_weights()
    grads, masks = [], []

    def loss(ws):
        net.set_weights(ws)
        return net.training_loss(x, y, cost=cost, sample_weight=sample_weight)

    try:
        for li in range(len(weights)):
            pair_grads, pair_masks = [], []
            for pi in range(len(weights[li])):
                param = weights[li][pi]
                flat = param.reshape(-1)
                chosen = np.arange(flat.size) if flat.size <= max_entries else \
                    rng.choice(flat.size, max_entries, replace=False)
                g = np.zeros(flat.size)
                mask = np.zeros(flat.size, dtype=bool)
                for k in chosen:
                    saved = flat[k]
                    flat[k] = saved + eps
                    up = loss(weights)
                    flat[k] = saved - eps
                    down = loss(weights)
                    flat[k] = saved
                    g[k] = (up - down) / (2 * eps)
                    mask[k] = True
                pair_grads.append(g.reshape(param.shape))
                pair_masks.append(mask.reshape(param.shape))
            grads.append(tuple(pair_grads))
            masks.append(tuple(pair_masks))
    finally:
        net.set_weights(weights)
    return grads, masks


def check_gradients(net, x, y, cost=None, eps: float = 1e-6, max_entries: int = 200, seed: int = 0,
                    sample_weight=None) -> float:
    """Max relative error between ``net.gradients`` and finite differences (of the weighted
    mean cost with ``sample_weight``).

    Per parameter array, ‖g_backprop − g_numeric‖ / max(‖g_backprop‖ + ‖g_numeric‖, floor)
    over the checked entries; the maximum over all arrays is returned. In float64
    a correct backward pass gives ~1e-7 or less; use a float64 network. The floor
    is 0.1% of the whole network's gradient norm: an array whose true gradient is
    (nearly) zero, such as a bias whose errors cancel, is judged against that
    scale and not against the finite differences' rounding noise (~1e-10).
    """
    analytic = net.gradients(x, y, cost=cost, sample_weight=sample_weight)
    numeric, masks = numerical_gradients(net, x, y, cost=cost, eps=eps, max_entries=max_entries, seed=seed,
                                         sample_weight=sample_weight)
    worst = 0.0
    pairs = [(ga[m].astype(np.float64), gn[m]) for pa, pn, pm in zip(analytic, numeric, masks)
             for ga, gn, m in zip(pa, pn, pm)]
    floor = max(1e-3 * math.sqrt(sum(float(np.vdot(a, a)) for a, _ in pairs)), 1e-12)
    for a, b in pairs:
        rel = np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), floor)
        worst = max(worst, float(rel))
    return worst
