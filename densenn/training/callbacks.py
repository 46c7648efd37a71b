"""Callbacks: objects that ``fit`` calls at the start and end of training, of each epoch and
of each batch.

The protocol (every hook optional; a subclass of :class:`Callback` overrides what it needs)::

    on_train_begin(run)          before the first step (buffers are made here)
    on_epoch_begin(run)          run.epoch is the epoch about to be trained (0-based)
    on_batch_begin(run)          run.step is the batch about to be trained in this epoch
    on_batch_end(run)
    on_epoch_end(run, logs)      logs: loss, accuracy, val_loss, val_accuracy, lr, seconds;
                                 returning True (or setting run.stop_training) stops training
    on_train_end(run)            always, whatever ended training (the last epoch, a callback,
                                 a divergence, Ctrl-C)

``run`` (a :class:`densenn.training.fit.Run`) gives ``net``, ``optimizer`` (set
``run.optimizer.lr`` to change the rate from the next step on), ``history``, ``epoch``,
``epochs``, ``step``, ``steps`` and ``stop_training``. A callback that checkpoints must
give ``config()`` (to be rebuilt by :func:`densenn.resume`) and ``state()`` /
``load_state(state)``: a JSON-ready dict plus named NumPy arrays. A plain function
``cb(epoch, logs)`` works as an ``on_epoch_end`` that stops training when it returns True.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Any

import numpy as np

from densenn.errors import DensennError, check_choice, check_nonnegative_int, describe
from densenn.files import check_writable_folder

#: what ``monitor`` may name: the keys of the logs each epoch ends with
MONITORS = ("loss", "accuracy", "val_loss", "val_accuracy")


class Callback:
    """The base of every callback: all hooks do nothing (see the module docstring)."""

    def on_train_begin(self, run) -> None:
        pass

    def on_epoch_begin(self, run) -> None:
        pass

    def on_batch_begin(self, run) -> None:
        pass

    def on_batch_end(self, run) -> None:
        pass

    def on_epoch_end(self, run, logs: dict) -> bool | None:
        return None

    def on_train_end(self, run) -> None:
        pass

    def config(self) -> dict | None:
        """The constructor's arguments, for a checkpoint to rebuild this callback (None: it
        cannot be rebuilt, and a resume must be given it again)."""
        return None

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What a checkpoint keeps of this callback: a JSON-ready dict and named arrays."""
        return {}, {}

    def load_state(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """Take back what ``state`` gave (called before ``on_train_begin`` on a resume)."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in (self.config() or {}).items())
        return f"{type(self).__name__}({args})"


class FunctionCallback(Callback):
    """A plain ``cb(epoch, logs)``: called at each epoch's end; returning True stops training."""

    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, run, logs):
        return bool(self.fn(run.epoch, logs))

    def __repr__(self):
        return f"FunctionCallback({self.fn!r})"


def _check_monitor(monitor, mode) -> tuple[str, str]:
    monitor = check_choice("monitor", monitor, MONITORS)
    mode = check_choice("mode", mode, ("auto", "min", "max"))
    if mode == "auto":
        mode = "max" if monitor.endswith("accuracy") else "min"
    return monitor, mode


class _Monitor(Callback):
    """What watches one of the logs for improvement: monitor, mode, min_delta, patience."""

    def __init__(self, monitor: str, mode: str, min_delta: float, patience: int):
        self.monitor, self.mode = _check_monitor(monitor, mode)
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) \
                or not math.isfinite(min_delta) or min_delta < 0:
            raise DensennError(f"min_delta must be a finite number >= 0, got {describe(min_delta)}")
        self.min_delta = float(min_delta)
        self.patience = check_nonnegative_int("patience", patience)
        self.best: float | None = None
        self.wait = 0

    def check_logs(self, run) -> None:
        """DensennError at the start of training when the monitored value will never be there."""
        if self.monitor.startswith("val_") and not run.validates:
            raise DensennError(f"{type(self).__name__} monitors {self.monitor!r}, but fit has no validation "
                               "set: give validation_data= or validation_split=, or monitor='loss'")
        if self.monitor.endswith("accuracy") and not run.classifies:
            raise DensennError(f"{type(self).__name__} monitors {self.monitor!r}, but the targets are not "
                               "class labels (no accuracy is computed): monitor a loss")

    def improved(self, logs: dict) -> bool:
        """Whether logs[monitor] beats the best so far by more than min_delta (and records it)."""
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            better, value = False, math.nan
        elif self.best is None:
            better = True
        elif self.mode == "min":
            better = value < self.best - self.min_delta
        else:
            better = value > self.best + self.min_delta
        if better:
            self.best, self.wait = float(value), 0
        else:
            self.wait += 1
        return better

    def state(self):
        return {"best": self.best, "wait": self.wait}, {}

    def load_state(self, state, arrays):
        self.best, self.wait = state["best"], int(state["wait"])


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs; with ``restore_best_weights``, the network ends with the weights (and running
    statistics) of its best epoch, whatever ended training.

    The best weights are kept on the engine in buffers made once at the start of training:
    an improvement costs one on-engine copy of each tensor, never a host round trip.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = True):
        super().__init__(monitor, mode, min_delta, patience)
        self.restore_best_weights = bool(restore_best_weights)
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._saved: dict = {}        # model-file name -> engine buffer with the best values
        self._engine: Any = None
        self._loaded: dict[str, np.ndarray] = {}
        self._resumed = False         # load_state ran: keep what it gave

    def config(self):
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta, "mode": self.mode,
                "restore_best_weights": self.restore_best_weights}

    def on_train_begin(self, run):
        self.check_logs(run)
        if not self._resumed:
            self.stopped_epoch = None
        self._resumed = False
        if self.restore_best_weights:
            self._engine = e = run.net.engine
            tensors = run.net._engine_tensors()
            self._saved = {name: e.empty(t.shape, t.dtype) for name, t in tensors.items()}
            for name, t in tensors.items():
                # a resumed run takes back the best weights its checkpoint kept; a fresh one
                # starts from its initial weights (replaced at its first epoch's end)
                if name in self._loaded:
                    e.upload(np.ascontiguousarray(self._loaded[name], dtype=t.dtype), self._saved[name])
                else:
                    e.copy(t, self._saved[name])
            self._loaded = {}

    def on_epoch_end(self, run, logs):
        if self.improved(logs):
            self.best_epoch = run.epoch
            if self.restore_best_weights:
                for name, t in run.net._engine_tensors().items():
                    self._engine.copy(t, self._saved[name])
            return False
        if self.wait >= self.patience:
            self.stopped_epoch = run.epoch
            return True
        return False

    def on_train_end(self, run):
        if self._saved:
            if self.best_epoch is not None:
                for name, t in run.net._engine_tensors().items():
                    self._engine.copy(self._saved[name], t)
            for buf in self._saved.values():
                self._engine.release(buf)
            self._saved = {}

    def state(self):
        json_state, _ = super().state()
        json_state.update(best_epoch=self.best_epoch, stopped_epoch=self.stopped_epoch)
        arrays = {name: self._engine.to_host(buf) for name, buf in self._saved.items()} \
            if self._saved and self.best_epoch is not None else {}
        return json_state, arrays

    def load_state(self, state, arrays):
        super().load_state(state, arrays)
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
        self._loaded = dict(arrays)
        self._resumed = True


class ReduceLROnPlateau(_Monitor):
    """Multiply the optimizer's rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (then wait ``cooldown`` epochs); never below ``min_lr``."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
                 mode: str = "auto", cooldown: int = 0, min_lr: float = 0.0):
        super().__init__(monitor, mode, min_delta, patience)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
            raise DensennError(f"factor must be a number in (0, 1), got {describe(factor)}")
        if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or not math.isfinite(min_lr) \
                or min_lr < 0:
            raise DensennError(f"min_lr must be a finite number >= 0, got {describe(min_lr)}")
        self.factor, self.min_lr = float(factor), float(min_lr)
        self.cooldown = check_nonnegative_int("cooldown", cooldown)
        self.cooling = 0

    def config(self):
        return {"monitor": self.monitor, "factor": self.factor, "patience": self.patience,
                "min_delta": self.min_delta, "mode": self.mode, "cooldown": self.cooldown, "min_lr": self.min_lr}

    def on_train_begin(self, run):
        self.check_logs(run)

    def on_epoch_end(self, run, logs):
        if self.cooling > 0:
            self.cooling -= 1
            self.wait = 0
        if not self.improved(logs) and self.cooling == 0 and self.wait >= self.patience:
            opt = run.optimizer
            if opt.lr > self.min_lr:
                # the base rate changes, so a schedule keeps shaping it, as Keras does
                opt.lr = max(opt.lr * self.factor, self.min_lr)
            self.cooling, self.wait = self.cooldown, 0
        return False

    def state(self):
        json_state, _ = super().state()
        json_state["cooling"] = self.cooling
        return json_state, {}

    def load_state(self, state, arrays):
        super().load_state(state, arrays)
        self.cooling = int(state["cooling"])


class ModelCheckpoint(Callback):
    """Save the model (``Network.save``: weights and architecture, atomically) at each
    epoch's end, or only when ``monitor`` improves with ``save_best_only``. ``path`` may hold
    ``{epoch}`` (1-based) and any log name, as ``"model-{epoch:03d}-{val_loss:.3f}.dn"``."""

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto"):
        check_writable_folder(path, "path")
        self.path = os.fspath(path)
        self.monitor, self.mode = _check_monitor(monitor, mode)
        self.save_best_only = bool(save_best_only)
        self._watch = _Monitor(self.monitor, self.mode, 0.0, 0)
        self.saved: list[str] = []

    def config(self):
        return {"path": self.path, "monitor": self.monitor, "save_best_only": self.save_best_only, "mode": self.mode}

    def on_train_begin(self, run):
        if self.save_best_only:
            self._watch.check_logs(run)

    def on_epoch_end(self, run, logs):
        if self.save_best_only and not self._watch.improved(logs):
            return False
        values = {k: v for k, v in logs.items() if v is not None}
        try:
            path = self.path.format(epoch=run.epoch + 1, **values)
        except (KeyError, IndexError, ValueError) as exc:
            raise DensennError(f"ModelCheckpoint path {self.path!r} names what the logs do not have: {exc}") \
                from None
        self.saved.append(run.net.save(path))
        return False

    def state(self):
        return {"best": self._watch.best, "wait": self._watch.wait}, {}

    def load_state(self, state, arrays):
        self._watch.load_state(state, arrays)


class CSVLogger(Callback):
    """One CSV row per epoch (epoch and every log), flushed as it is written; ``append``
    continues a file (a resumed run always appends, after the rows its checkpoint knew)."""

    FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")

    def __init__(self, path, append: bool = False):
        check_writable_folder(path, "path")
        self.path = os.fspath(path)
        self.append = bool(append)
        self.rows = 0            # rows written by this run (a checkpoint keeps the count)
        self._resumed = False
        self._file: Any = None

    def config(self):
        return {"path": self.path, "append": self.append}

    def on_train_begin(self, run):
        keep = self.append or self._resumed
        if self._resumed:
            # rows written after the checkpoint the run resumed from are dropped: they are
            # trained again, so the file ends as an uninterrupted run's would
            self._truncate(self.rows)
        new = not (keep and os.path.exists(self.path) and os.path.getsize(self.path) > 0)
        self._file = open(self.path, "a" if keep else "w", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(self.FIELDS)
            self._file.flush()

    def _truncate(self, rows: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            lines = f.readlines()
        with open(self.path, "w", newline="") as f:
            f.writelines(lines[:rows + 1])

    def on_epoch_end(self, run, logs):
        self._writer.writerow([run.epoch + 1] + ["" if logs.get(k) is None else repr(logs[k])
                                                 for k in self.FIELDS[1:]])
        self._file.flush()
        self.rows += 1
        return False

    def on_train_end(self, run):
        if self._file is not None:
            self._file.close()
            self._file = None

    def state(self):
        return {"rows": self.rows}, {}

    def load_state(self, state, arrays):
        self.rows, self._resumed = int(state["rows"]), True


#: the callbacks a checkpoint can rebuild from their config
BUILTIN = {cls.__name__: cls for cls in (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, CSVLogger)}


def check_callbacks(callbacks) -> list[Callback]:
    """The callbacks as a list of Callback objects (plain functions wrapped), checked before
    any training is done."""
    if callbacks is None:
        return []
    if callable(callbacks) and not isinstance(callbacks, Callback):
        return [FunctionCallback(callbacks)]
    if isinstance(callbacks, Callback):
        return [callbacks]
    try:
        items = list(callbacks)
    except TypeError:
        raise DensennError(f"callbacks must be a list of Callback objects or functions cb(epoch, logs), got "
                           f"{describe(callbacks)}") from None
    out: list[Callback] = []
    for i, cb in enumerate(items):
        if isinstance(cb, Callback):
            out.append(cb)
        elif callable(cb):
            out.append(FunctionCallback(cb))
        else:
            raise DensennError(f"callbacks[{i}] must be callable as cb(epoch, logs) or a densenn.Callback, got "
                               f"{describe(cb)}")
    return out
