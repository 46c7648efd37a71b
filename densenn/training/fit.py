"""The fit loop: epochs, shuffled mini-batches, metrics, progress, divergence guard.

Data goes to the engine once per ``fit``; each step gathers its batch's rows
there (``take_rows``), runs forward, cost, backward and the optimizer without
allocating, and leaves the loss on the engine. The loss is read back once per
epoch (and now and then for the progress bar).
"""
from __future__ import annotations

import math
import time

import numpy as np

from densenn.errors import DensennError, TrainingDiverged, check_matrix, check_positive_int, describe
from densenn.nn.cost import get_cost
from densenn.nn.targets import index_dtype, prepare_targets
from densenn.optim import Adam, get_optimizer
from densenn.training.history import History


def _progress(total: int, enabled):
    if enabled is None:
        enabled = True
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="batch", dynamic_ncols=True, leave=True)


def fit(net, x, y, epochs: int = 10, batch_size: int = 32, cost=None, optimizer=None,
        validation_data=None, shuffle: bool = True, progress=None, callbacks=(), lr: float | None = None,
        rng=None, on_begin=None):
    """Train ``net`` on (x, y) and return a :class:`History`.

    x: ``(n_samples, n_features)``; y: class indices, one-hot rows or real targets.
    ``cost`` defaults to the output activation's partner (softmax → cross-entropy,
    sigmoid → binary cross-entropy, else quadratic); ``optimizer`` to Adam(1e-3)
    (a name such as ``"sgd"`` with ``lr`` works too). Shuffling each epoch comes
    from the network's seed. The last, smaller batch of an epoch is trained on.
    ``callbacks`` are called as ``cb(epoch, logs)``; one returning True stops
    training. If the loss becomes NaN/inf, training stops with
    :class:`TrainingDiverged` and the weights from the start of that epoch
    (the optimizer's momentum/moments are reset: they hold the NaN too).
    ``rng`` shuffles the batches (Network.fit passes the network's own stream; None: a new
    one from ``net.seed``); ``on_begin(optimizer, history)`` is called once both exist, before
    the first step (Network.fit keeps them as ``net.optimizer`` and ``net.history``).
    """
    x = check_matrix("x", x, n_features=net.n_in, dtype=net.dtype)
    n = x.shape[0]
    epochs = check_positive_int("epochs", epochs)
    batch_size = min(check_positive_int("batch_size", batch_size), n)
    targets, labels = prepare_targets(y, n, net.n_out)
    cost = get_cost(cost or net.default_cost())
    cost.check_targets(targets, "y")
    targets = check_matrix("y", targets, dtype=net.dtype)
    callbacks = _check_callbacks(callbacks)
    if optimizer is None:
        optimizer = Adam() if lr is None else Adam(lr)
    else:
        optimizer = get_optimizer(optimizer, lr)
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise DensennError(f"validation_data must be a pair (x_val, y_val), got {describe(validation_data)}")
        xv = check_matrix("validation_data x", validation_data[0], n_features=net.n_in, dtype=net.dtype)
        val_targets, _ = prepare_targets(validation_data[1], xv.shape[0], net.n_out, name="validation_data y")
        cost.check_targets(val_targets, "validation_data y")
        val = (xv, validation_data[1])

    e, dt = net.engine, net.dtype
    tn = net.trainer(batch_size, cost, gradients=not optimizer.folds_into_gemm)
    if tn.min_rows > 1 and (batch_size == 1 or n == 1 or n % batch_size == 1):
        raise DensennError(f"batch_size={batch_size} with {n} samples gives a batch of 1 sample; BatchNorm needs "
                           "at least 2 per batch in training (the variance of one sample is 0): choose another "
                           "batch_size")
    optimizer.bind(e, tn.params, dt)
    optimizer.schedule.begin_fit(epochs)

    # the whole data set goes to the engine once; batches are gathered there
    xs = e.to_engine(x)
    ys = e.to_engine(targets)
    ls = e.to_engine(labels.astype(index_dtype(e))) if labels is not None else None
    backup = [e.empty(p.shape, dt) for p in tn.params]
    check = _FiniteCheck(e, tn.params, dt)

    steps = math.ceil(n / batch_size)
    history = History()
    if on_begin is not None:
        on_begin(optimizer, history)
    if rng is None:
        rng = np.random.default_rng([net.seed, 1])
    bar = _progress(epochs * steps, progress)
    try:
        for epoch in range(epochs):
            start = time.perf_counter()
            for p, saved in zip(tn.params, backup):
                e.copy(p, saved)
            order = (rng.permutation(n) if shuffle else np.arange(n)).astype(index_dtype(e))
            tn.read_acc(reset=True)
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                rows = tn.load(xs, ys, ls, idx)
                tn.step(rows, optimizer, epoch + step / steps, labels is not None)
                if bar is not None:
                    bar.update(1)
            loss_sum, correct = tn.read_acc(reset=True)
            loss = loss_sum / n
            # the loss is taken before each update, so the epoch's last updates are seen only
            # in the weights themselves
            what = f"the training loss became {loss}" if not math.isfinite(loss) else \
                None if check.finite(tn.params) else "the weights became NaN or infinite"
            if what is not None:
                for p, saved in zip(tn.params, backup):
                    e.copy(saved, p)
                # the momentum/moments took in the same NaN/inf: without a reset, a retry with a
                # smaller rate and this optimizer would diverge again at its first step
                optimizer.reset()
                raise TrainingDiverged(
                    f"{what} in epoch {epoch + 1}; training stopped and the weights "
                    f"from the start of that epoch were kept, the optimizer's state reset (try a smaller "
                    f"learning rate, now {optimizer.current_lr(epoch):g}, or standardised inputs)")
            logs = {"loss": loss, "accuracy": correct / n if labels is not None else None,
                    "lr": optimizer.current_lr(epoch), "val_loss": None, "val_accuracy": None}
            if val is not None:
                scores = net.evaluate(val[0], val[1], cost=cost)
                logs["val_loss"], logs["val_accuracy"] = scores["loss"], scores["accuracy"]
            logs["seconds"] = time.perf_counter() - start
            history.append(**logs)
            if bar is not None:
                bar.set_postfix(_postfix(epoch, epochs, logs), refresh=True)
            if any(cb(epoch, logs) for cb in callbacks):
                break
    finally:
        if bar is not None:
            bar.close()
        check.release()
        for buf in backup + [xs, ys] + ([ls] if ls is not None else []):
            e.release(buf)
    return history


def _check_callbacks(callbacks) -> list:
    """The callbacks as a list, each callable, checked before any training is done."""
    if callable(callbacks):
        return [callbacks]
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise DensennError(f"callbacks must be a list of functions cb(epoch, logs), got {describe(callbacks)}") \
            from None
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise DensennError(f"callbacks[{i}] must be callable as cb(epoch, logs), got {describe(cb)}")
    return callbacks


class _FiniteCheck:
    """Whether parameters on an engine are all finite, read as one small vector.

    Each weight matrix's column sums (``sum_rows``) and each bias are gathered into
    one scratch vector on the engine; a NaN or inf anywhere makes its sum NaN or inf.
    One transfer of (Σ fan-in + Σ units) values, instead of every weight.
    """

    def __init__(self, engine, params, dtype):
        self.engine = engine
        widths = [p.shape[1] if len(p.shape) == 2 else p.shape[0] for p in params]
        self.sums = engine.empty((sum(widths),), dtype)
        starts = np.cumsum([0] + widths)
        self.views = [self.sums[lo:hi] for lo, hi in zip(starts[:-1], starts[1:])]

    def finite(self, params) -> bool:
        e = self.engine
        for p, out in zip(params, self.views):
            if len(p.shape) == 2:
                e.sum_rows(p, out)
            else:
                e.copy(p, out)
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(e.to_host(self.sums)).all())

    def release(self):
        self.engine.release(self.sums)


def _postfix(epoch, epochs, logs) -> dict:
    post = {"epoch": f"{epoch + 1}/{epochs}", "loss": f"{logs['loss']:.4f}"}
    if logs["accuracy"] is not None:
        post["acc"] = f"{logs['accuracy']:.4f}"
    if logs["val_accuracy"] is not None:
        post["val_acc"] = f"{logs['val_accuracy']:.4f}"
    elif logs["val_loss"] is not None:
        post["val_loss"] = f"{logs['val_loss']:.4f}"
    return post
