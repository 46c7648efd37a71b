"""The validation split: a fraction of the training data held out, stratified by class."""
from __future__ import annotations

import numpy as np

from densenn.errors import DensennError, describe


def validation_split(fraction, n: int, labels: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, val_rows): sorted row indices, the second about ``fraction`` of ``n``.

    With class ``labels`` each class gives its share (largest remainders settle the
    rounding), so the validation set keeps the classes' proportions; the rows are drawn
    from a generator of their own, seeded by the network's ``seed``, so the same network
    and data always hold out the same rows (a resumed run finds its split again).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise DensennError(f"validation_split must be a fraction in (0, 1), got {describe(fraction)}")
    n_val = round(fraction * n)
    if n_val == 0 or n_val == n:
        raise DensennError(f"validation_split={fraction!r} of {n} samples leaves "
                           f"{'no validation' if n_val == 0 else 'no training'} sample: choose a fraction "
                           f"between {1 / n:.3g} and {1 - 1 / n:.3g}")
    rng = np.random.default_rng([seed, 2])
    if labels is None:
        val = rng.permutation(n)[:n_val]
    else:
        classes, counts = np.unique(labels, return_counts=True)
        share = counts * (n_val / n)
        take = np.floor(share).astype(np.int64)
        # the rows floor() left over go to the classes it cut the most from
        rest = n_val - int(take.sum())
        take[np.argsort(-(share - take), kind="stable")[:rest]] += 1
        val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)])
    held = np.zeros(n, dtype=bool)
    held[val] = True
    return np.flatnonzero(~held), np.flatnonzero(held)

