"""The fit loop: epochs, shuffled mini-batches, metrics, callbacks, checkpoints, progress,
and the divergence guard.

Data goes to the engine once per ``fit``; each step gathers its batch's rows there
(``take_rows``), runs forward, cost, backward and the optimizer without allocating, and
leaves the loss on the engine. The loss is read back once per epoch.

A :class:`Run` is the state of one fit: what callbacks see and what a checkpoint keeps.
Everything that decides the weights (the weights, the optimizer's state and step count,
the shuffling generator's state at the epoch's start, the step reached, the dropout
counters) is in a checkpoint, so a resumed run takes the same steps as one never stopped.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

import numpy as np

from densenn.errors import (
    DensennError,
    TrainingDiverged,
    check_matrix,
    check_nonnegative_int,
    check_positive_int,
    describe,
)
from densenn.files import check_writable_folder
from densenn.nn.cost import get_cost
from densenn.nn.targets import index_dtype, prepare_targets
from densenn.optim import Adam, get_optimizer
from densenn.training import checkpoint as ckpt
from densenn.training.callbacks import Callback, check_callbacks
from densenn.training.history import History
from densenn.training.split import validation_split as split_off
from densenn.training.weights import resolve_weights


def _progress(total: int, initial: int, enabled):
    if enabled is None:
        enabled = True
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, leave=True)


def fit(net, x, y, epochs: int = 10, batch_size: int = 32, cost=None, optimizer=None,
        validation_data=None, validation_split=None, shuffle: bool = True, progress=None, callbacks=(),
        lr: float | None = None, sample_weight=None, class_weight=None, initial_epoch: int = 0,
        checkpoint=None, checkpoint_every=None, rng=None, on_begin=None, resume_from=None, extra=None):
    """Train ``net`` on (x, y) and return a :class:`History`.

    x: ``(n_samples, n_features)``; y: class indices, one-hot rows or real targets.
    ``cost`` defaults to the output activation's partner (softmax → cross-entropy,
    sigmoid → binary cross-entropy, else quadratic); ``optimizer`` to Adam(1e-3)
    (a name such as ``"sgd"`` with ``lr`` works too). Shuffling each epoch comes
    from the network's seed. The last, smaller batch of an epoch is trained on.

    ``validation_data=(x_val, y_val)`` or ``validation_split=f`` (a fraction of (x, y) held
    out before training, stratified by class, drawn from the network's seed) gives the
    ``val_loss`` and ``val_accuracy`` of each epoch (``validation_data=(x_val, y_val, w_val)``
    weighs them). ``sample_weight`` (one per sample) and ``class_weight`` (``{class: w}`` or
    ``"balanced"``) make the loss of each batch the weighted mean Σ wᵢ lᵢ / Σ wᵢ, as
    scikit-learn does (see densenn.training.weights); the epoch's loss and accuracy are
    weighted the same way. ``callbacks``: Callback objects (see
    densenn.training.callbacks) or functions ``cb(epoch, logs)``, which stop training by
    returning True. ``initial_epoch``: the epoch to start from (schedules see the epoch
    number). ``checkpoint=path`` writes a checkpoint (atomically) at every epoch's end and,
    with ``checkpoint_every=N``, every N steps too; ``densenn.resume(path, x, y)``
    continues from it. Ctrl-C stops training at the end of the step under way (the weights
    whole), writes a checkpoint where one is asked for, and raises KeyboardInterrupt.

    If the loss becomes NaN/inf, training stops with :class:`TrainingDiverged` and the
    weights from the start of that epoch (the optimizer's state reset: it holds the NaN
    too). ``rng`` shuffles the batches (Network.fit passes the network's own stream; None:
    a new one from ``net.seed``); ``on_begin(optimizer, history)`` is called once both exist.
    ``resume_from`` (a read Checkpoint) and ``extra`` (JSON kept in checkpoints) are for
    densenn.resume and the command line.
    """
    x = check_matrix("x", x, n_features=net.n_in, dtype=net.dtype)
    epochs = check_positive_int("epochs", epochs)
    initial_epoch = check_nonnegative_int("initial_epoch", initial_epoch)
    if initial_epoch >= epochs and resume_from is None:
        raise DensennError(f"initial_epoch={initial_epoch} leaves nothing to train: it must be below "
                           f"epochs={epochs} (epochs counts from 0, not from initial_epoch)")
    targets, labels = prepare_targets(y, x.shape[0], net.n_out)
    w = resolve_weights(sample_weight, class_weight, labels, x.shape[0], max(net.n_out, 2))
    cost = get_cost(cost or net.default_cost())
    cost.check_targets(targets, "y")
    targets = check_matrix("y", targets, dtype=net.dtype)
    callbacks = check_callbacks(callbacks)
    if optimizer is None:
        optimizer = Adam() if lr is None else Adam(lr)
    else:
        optimizer = get_optimizer(optimizer, lr)
    if checkpoint is not None:
        check_writable_folder(checkpoint, "checkpoint")
    if checkpoint_every is not None:
        checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
        if checkpoint is None:
            raise DensennError("checkpoint_every was given without checkpoint=path: say where to write them")
    val = _validation(net, cost, validation_data)
    if validation_split is not None:
        if val is not None:
            raise DensennError("give validation_data or validation_split, not both")
        train_rows, val_rows = split_off(validation_split, x.shape[0], labels, net.seed)
        val = (x[val_rows], targets[val_rows], None if w is None else w[val_rows])
        x, targets = x[train_rows], targets[train_rows]
        labels = None if labels is None else labels[train_rows]
        w = None if w is None else w[train_rows]
        if w is not None and not w.any():
            raise DensennError("the weights of the rows left for training after validation_split are all 0")
    n = x.shape[0]
    batch_size = min(check_positive_int("batch_size", batch_size), n)
    fit_args = {"epochs": epochs, "batch_size": batch_size, "cost": cost.name, "shuffle": bool(shuffle),
                "validation_split": validation_split, "validation_data": validation_data is not None,
                "checkpoint_every": checkpoint_every, "class_weight": _class_weight_json(class_weight)}
    print_ = None if checkpoint is None and resume_from is None else ckpt.fingerprint(x, targets, w)
    if resume_from is not None:
        _check_resumable(resume_from, fit_args, print_)

    tn = net.trainer(batch_size, cost, gradients=not optimizer.folds_into_gemm)
    if tn.min_rows > 1 and (batch_size == 1 or n == 1 or n % batch_size == 1):
        raise DensennError(f"batch_size={batch_size} with {n} samples gives a batch of 1 sample; BatchNorm needs "
                           "at least 2 per batch in training (the variance of one sample is 0): choose another "
                           "batch_size")
    optimizer.bind(net.engine, tn.params, net.dtype)
    optimizer.schedule.begin_fit(epochs)
    history = History()
    if on_begin is not None:
        on_begin(optimizer, history)
    if rng is None:
        rng = np.random.default_rng([net.seed, 1])
    run = Run(net, tn, optimizer, history, callbacks, epochs, batch_size, rng)
    run.classifies, run.validates, run.shuffle = labels is not None, val is not None, bool(shuffle)
    run.epoch, run.checkpoint, run.checkpoint_every = initial_epoch, checkpoint, checkpoint_every
    run.fit_args, run.fingerprint, run.extra = fit_args, print_, extra
    if resume_from is not None:
        run.restore(resume_from)
    run.train(x, targets, labels, w, val, cost, progress)
    return history


def _class_weight_json(class_weight):
    """class_weight as a checkpoint keeps it (JSON has no integer keys): pairs, or the name."""
    if isinstance(class_weight, dict):
        return [[int(k), float(v)] for k, v in class_weight.items()]
    return class_weight


def _validation(net, cost, validation_data):
    """(x_val, y_val, w_val or None) checked, or None."""
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise DensennError(f"validation_data must be a pair (x_val, y_val) or a triple (x_val, y_val, "
                           f"sample_weight_val), got {describe(validation_data)}")
    xv = check_matrix("validation_data x", validation_data[0], n_features=net.n_in, dtype=net.dtype)
    val_targets, val_labels = prepare_targets(validation_data[1], xv.shape[0], net.n_out, name="validation_data y")
    cost.check_targets(val_targets, "validation_data y")
    wv = None if len(validation_data) == 2 else \
        resolve_weights(validation_data[2], None, val_labels, xv.shape[0], max(net.n_out, 2), "validation_data ")
    return xv, validation_data[1], wv


def _check_resumable(state, fit_args: dict, print_: str | None) -> None:
    """DensennError unless this fit continues the one ``state`` (a Checkpoint) was taken of."""
    if state.training["fingerprint"] != print_:
        raise DensennError(f"checkpoint {state.path!r} was taken while training on other data: x, y and "
                           "sample_weight (after any validation split) must be those it was written with")
    saved = state.training["fit"]
    for key in ("batch_size", "cost", "shuffle", "validation_split", "validation_data"):
        if saved.get(key) != fit_args[key]:
            raise DensennError(f"checkpoint {state.path!r} was written by a fit with {key}={saved.get(key)!r}; "
                               f"this one has {key}={fit_args[key]!r}")


class Run:
    """The state of one fit: what callbacks see (``net``, ``optimizer``, ``history``,
    ``epoch``, ``epochs``, ``step``, ``steps``, ``stop_training``) and checkpoints keep."""

    def __init__(self, net, tn, optimizer, history, callbacks, epochs, batch_size, rng):
        self.net, self.tn, self.optimizer, self.history = net, tn, optimizer, history
        self.callbacks = callbacks
        self.epochs, self.batch_size, self.rng = epochs, batch_size, rng
        self.epoch = self.step = self.global_step = 0
        self.steps = 0
        self.stop_training = False
        self.classifies = self.validates = False
        self.shuffle = True
        self.checkpoint = self.checkpoint_every = None
        self.fit_args: dict = {}
        self.fingerprint: str | None = None
        self.extra = None
        self.epoch_rng_state = rng.bit_generator.state
        self._resumed = False
        self._start = time.perf_counter()
        # per batch hook, the callbacks that define it: one nobody defines costs nothing
        self._hooks = {name: [cb for cb in callbacks if getattr(type(cb), name) is not getattr(Callback, name)]
                       for name in ("on_batch_begin", "on_batch_end")}

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> str | None:
        """Write a checkpoint of this run as it is now (a step boundary), if one is asked for."""
        if self.checkpoint is None:
            return None
        if self.step == 0:
            # between epochs the generator is where the next epoch's order will be drawn from
            self.epoch_rng_state = self.rng.bit_generator.state
        return ckpt.write(self.checkpoint, self)

    def restore(self, state) -> None:
        """Take up the run a checkpoint (``state``) was taken of; the network already holds its
        tensors (densenn.resume built it from them)."""
        e, tr = self.net.engine, state.training
        slots = state.prefixed("optimizer")
        for i, bufs in enumerate(self.optimizer.state):
            for k, buf in enumerate(bufs):
                saved = slots.get(f"{i}.{k}")
                if saved is None or tuple(saved.shape) != tuple(buf.shape):
                    raise DensennError(f"checkpoint {state.path!r} holds no optimizer state {i}.{k} of shape "
                                       f"{tuple(buf.shape)}: it was written with another optimizer")
                e.upload(np.ascontiguousarray(saved, dtype=self.net.dtype), buf)
        self.optimizer.t = int(tr["optimizer"]["t"])
        self.net.load_layer_states(tr["layer_states"])
        self.history.history = {k: list(v) for k, v in tr["history"].items()}
        e.upload(np.ascontiguousarray(state.arrays["run.acc"], dtype=self.net.dtype), self.tn.acc)
        self.epoch, self.step, self.global_step = int(tr["epoch"]), int(tr["step"]), int(tr["global_step"])
        self.stop_training = bool(tr["stopped"])
        self.epoch_rng_state = tr["rng"]
        self.rng.bit_generator.state = tr["rng"]
        saved_cbs = tr["callbacks"]
        if [c["type"] for c in saved_cbs] != [type(cb).__name__ for cb in self.callbacks]:
            raise DensennError(f"checkpoint {state.path!r} was written with callbacks "
                               f"{[c['type'] for c in saved_cbs]}; this fit has "
                               f"{[type(cb).__name__ for cb in self.callbacks]}")
        for j, (cb, saved) in enumerate(zip(self.callbacks, saved_cbs)):
            cb.load_state(saved["state"], state.prefixed(f"callbacks.{j}"))
        self._resumed = True

    # -- the loop -------------------------------------------------------------------------
    def train(self, x, targets, labels, w, val, cost, progress) -> None:
        net, tn, e = self.net, self.tn, self.net.engine
        n = x.shape[0]
        self.steps = steps = math.ceil(n / self.batch_size)
        # the whole data set goes to the engine once; batches are gathered there
        xs = e.to_engine(x)
        ys = e.to_engine(targets)
        ls = e.to_engine(labels.astype(index_dtype(e))) if labels is not None else None
        ws = None if w is None else tn.sample_weights(w)
        backup = [e.empty(p.shape, p.dtype) for p in tn.params]
        check = _FiniteCheck(e, tn.params, net.dtype)
        if not self._resumed:
            e.fill(tn.acc, 0.0)
        bar = _progress(self.epochs * steps, self.epoch * steps + self.step, progress)
        try:
            with _DeferredInterrupt() as interrupt:
                for cb in self.callbacks:
                    cb.on_train_begin(self)
                while self.epoch < self.epochs and not self.stop_training:
                    self._epoch(xs, ys, ls, ws, n, backup, check, bar, interrupt)
                    logs = self._epoch_end(n if ws is None else ws.total, val, cost, backup, check,
                                           labels is not None)
                    if bar is not None:
                        bar.set_postfix(_postfix(self.epoch, self.epochs, logs), refresh=True)
                    for cb in self.callbacks:
                        if cb.on_epoch_end(self, logs):
                            self.stop_training = True
                    self.epoch += 1
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            for cb in self.callbacks:
                cb.on_train_end(self)
            check.release()
            for buf in backup + [xs, ys, ls, None if ws is None else ws.on_engine]:
                if buf is not None:
                    e.release(buf)

    def _epoch(self, xs, ys, ls, ws, n, backup, check, bar, interrupt) -> None:
        """The steps of one epoch from ``self.step`` on (0, or where a resumed run stopped)."""
        e, tn, bs = self.net.engine, self.tn, self.batch_size
        if self.step == 0:
            self.epoch_rng_state = self.rng.bit_generator.state
        self._start = time.perf_counter()
        for p, saved in zip(tn.params, backup):
            e.copy(p, saved)
        # the order is drawn from the state the epoch began with, so a run resumed mid-epoch
        # takes the batches it would have taken
        order = (self.rng.permutation(n) if self.shuffle else np.arange(n)).astype(index_dtype(e))
        for cb in self.callbacks:
            cb.on_epoch_begin(self)
        begin, end = self._hooks["on_batch_begin"], self._hooks["on_batch_end"]
        for step in range(self.step, self.steps):
            self.step = step
            for cb in begin:
                cb.on_batch_begin(self)
            rows = tn.load(xs, ys, ls, order[step * bs:(step + 1) * bs], ws)
            tn.step(rows, self.optimizer, self.epoch + step / self.steps, ls is not None)
            self.step, self.global_step = step + 1, self.global_step + 1
            for cb in end:
                cb.on_batch_end(self)
            if bar is not None:
                bar.update(1)
            if interrupt.requested:
                # after the epoch's last step too: a resume then runs no step, only the epoch's end
                raise KeyboardInterrupt(_interrupted(self.save_checkpoint()))
            if self.checkpoint_every and self.global_step % self.checkpoint_every == 0 and self.step < self.steps:
                self.save_checkpoint()
        self.step = 0

    def _epoch_end(self, n, val, cost, backup, check, classifies) -> dict:
        """The epoch's logs, after the divergence guard; appended to the history. ``n``: what
        the sums are divided by (the samples, or their total weight)."""
        e, tn, opt = self.net.engine, self.tn, self.optimizer
        loss_sum, correct = (float(v) for v in e.to_host(tn.acc)[:2])
        e.fill(tn.acc, 0.0)
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
            opt.reset()
            raise TrainingDiverged(
                f"{what} in epoch {self.epoch + 1}; training stopped and the weights "
                f"from the start of that epoch were kept, the optimizer's state reset (try a smaller "
                f"learning rate, now {opt.current_lr(self.epoch):g}, or standardised inputs)")
        logs = {"loss": loss, "accuracy": correct / n if classifies else None,
                "lr": opt.current_lr(self.epoch), "val_loss": None, "val_accuracy": None}
        if val is not None:
            scores = self.net.evaluate(val[0], val[1], cost=cost, sample_weight=val[2])
            logs["val_loss"], logs["val_accuracy"] = scores["loss"], scores["accuracy"]
        logs["seconds"] = time.perf_counter() - self._start
        self.history.append(**logs)
        return logs


def _interrupted(path) -> str:
    if path is None:
        return "training interrupted at the end of a step (the weights are whole; no checkpoint was asked for)"
    return f"training interrupted; checkpoint written to {path!r}: continue with densenn.resume({path!r}, x, y)"


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) during training sets ``requested`` instead of raising, so the loop
    stops between steps, never with a half-updated network; a second Ctrl-C raises at once.
    Only in the main thread, where Python lets a handler be set."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError):
                self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


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
