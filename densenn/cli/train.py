"""``densenn train``: train an MLP on digits or MNIST (validated on a split of the training
data, optionally stopped early), checkpointed so that it can be resumed; save model.dn and
training.png. The options, the split and ``--resume`` are in ``densenn.cli.workflow``."""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from densenn.cli.common import (
    CLI_FORMAT,
    DIGITS_SPLIT,
    PROG,
    TRAIN_DEFAULTS,
    _architecture,
    _clean,
    _engine,
    _load_dataset,
    _oneline,
    _print_json,
    _say,
    _standardizer_from,
)
from densenn.cli.workflow import (
    DEFAULT_OUT,
    checkpoint_block,
    checkpoint_path,
    network_from_checkpoint,
    new_settings,
    read_resume,
    resume_hint,
    resumed_callbacks,
    stamp,
    validation_rows,
)
from densenn.errors import DensennError, TrainingDiverged
from densenn.files import check_writable_folder


def _make_optimizer(name: str, lr: float, weight_decay, schedule: str, default_decay: float = 0.0,
                    clipnorm: float | None = None):
    """The optimizer ``name`` of ``densenn.optim.OPTIMIZERS`` (what it means: momentum 0.9,
    adamw's decoupled decay of 0.01, ...) with ``lr``, the weight decay (``weight_decay`` when
    given, else adamw's own, else ``default_decay``) and the schedule."""
    from densenn.optim import get_optimizer

    config = get_optimizer(name, lr).config()
    if weight_decay is not None:
        config["weight_decay"] = weight_decay
    elif name != "adamw":
        config["weight_decay"] = default_decay
    config["schedule"] = schedule
    config["clipnorm"] = clipnorm
    return get_optimizer(config)


def _hidden_layers(dn, sizes, activation: str, norm: str, dropout: float) -> list:
    """The hidden layers' specs: ``Dense(units, activation, norm=...)`` for each size (``norm``
    "none": a plain Dense layer, as before these options), each followed by ``Dropout(dropout)``
    when ``dropout`` > 0. The output layer is not included (no dropout after it)."""
    specs: list = []
    for units in sizes:
        specs.append(dn.Dense(units, activation, norm=None if norm == "none" else norm))
        if dropout > 0:
            specs.append(dn.Dropout(dropout))
    return specs


def _check_batchnorm_batches(batch_size: int, n_train: int) -> None:
    """``--norm batch`` trains on batches of 2 or more samples: fail before building the
    network, naming the options, when ``--batch-size`` would give a batch of 1."""
    if batch_size == 1 or n_train % batch_size == 1:
        what = ("--batch-size is 1" if batch_size == 1
                else f"--batch-size {batch_size} with {n_train} training samples leaves a last batch of 1")
        raise DensennError(f"--norm batch needs at least 2 samples in every training batch (the variance of "
                           f"one sample is 0), but {what}; choose another --batch-size")


def _prepare_out_folder(out_dir: str) -> None:
    """Create ``--out`` (and its parents) and check that files can be created there, so that
    a bad ``--out`` fails before the data are loaded and trained on, not after."""
    what = f"--out {out_dir!r}"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DensennError(f"{what} exists and is not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise DensennError(f"{what}: cannot create the folder ({exc.strerror or _oneline(exc)}"
                           f"{': ' + repr(exc.filename) if exc.filename else ''})") from None
    check_writable_folder(os.path.join(out_dir, "model.dn"), "--out")


def cmd_train(args) -> int:
    import densenn as dn
    from densenn.backend import check_dtype

    state = None
    if args.resume is not None:
        state, block, settings = read_resume(args)
        data_block = dict(block["data"], data_dir=settings["data_dir"])
    else:
        settings = new_settings(args)
        data_block = {"name": settings["data"], **(DIGITS_SPLIT if settings["data"] == "digits" else {}),
                      "data_dir": settings["data_dir"]}
    data_name = settings["data"]
    engine = _engine(settings["engine"] if state is not None else args.engine)   # fail fast, before the data
    check_dtype(engine, settings["dtype"])
    settings["engine"] = engine.name
    out_dir = args.out if args.out is not None else settings["out"] if state is not None else DEFAULT_OUT
    settings["out"] = os.path.abspath(out_dir)
    _prepare_out_folder(out_dir)
    ckpt_path = checkpoint_path(args, out_dir)
    split = {k: data_block[k] for k in ("test_size", "seed") if k in data_block}
    data = _load_dataset(data_name, settings["data_dir"], split or None, download=args.download)
    rows = validation_rows(settings, data.y_train)
    n_classes = int(data.n_classes)
    x_train, x_test = data.x_train, data.x_test
    if state is not None:
        # the statistics the run was started with, never fitted again: the same inputs as before
        standardizer = _standardizer_from(state.training["extra"])
    elif settings["standardize"]:
        from densenn.datasets import Standardizer

        # from the rows trained on only: the validation rows stay as unseen as the test set;
        # through its dict, as a resume rebuilds it
        standardizer = Standardizer.from_dict(
            Standardizer().fit(x_train if rows is None else x_train[rows[0]]).to_dict())
    else:
        standardizer = None
    if standardizer is not None:
        x_train, x_test = standardizer.transform(x_train), standardizer.transform(x_test)
    n_train = len(x_train) if rows is None else len(rows[0])
    n_val = 0 if rows is None else len(rows[1])

    net: Any = None
    if state is None:
        if settings["norm"] == "batch":
            _check_batchnorm_batches(settings["batch_size"], n_train)
        specs = _hidden_layers(dn, settings["layers"], settings["activation"], settings["norm"],
                               settings["dropout"]) + [dn.Dense(n_classes, "softmax")]
        net = dn.Network(x_train.shape[1], specs, engine=engine, dtype=settings["dtype"], seed=settings["seed"])
        settings["cost"] = settings["cost"] or net.default_cost()
        optimizer = _make_optimizer(settings["optimizer_name"], settings["lr"], settings["weight_decay"],
                                    settings["schedule"], TRAIN_DEFAULTS[data_name]["weight_decay"],
                                    settings.get("clipnorm"))
        settings["weight_decay"], settings["optimizer"] = optimizer.weight_decay, optimizer.config()
        arch = _architecture(net)
        what = f"{arch['text']} ({arch['params']:,} params)"
    else:
        tr = state.training
        steps = f" and {tr['step']} steps" if tr["step"] else ""
        what = f"resuming {args.resume} after {tr['epoch']} epochs{steps}"
    cost, epochs, batch_size = settings["cost"], settings["epochs"], settings["batch_size"]
    _say(args, f"densenn train: {data_name} ({n_train} training{f', {n_val} validation' if n_val else ''}, "
               f"{len(x_test)} test samples, {n_classes} classes{', standardised' if standardizer else ''}); "
               f"{_described(settings, what)}; engine {engine.name}, {settings['dtype']}")

    early = None
    before = stamp(ckpt_path)
    start = time.perf_counter()
    stopped = resume_from = None
    scores = {"accuracy": None, "loss": None}
    try:
        if state is None:
            callbacks: list = [] if settings["early_stopping"] is None else \
                [dn.EarlyStopping("val_loss", patience=settings["early_stopping"], restore_best_weights=True)]
            if settings["save_best"]:
                callbacks.append(dn.ModelCheckpoint(os.path.join(out_dir, "best.dn"), "val_loss", save_best_only=True))
            early = next((cb for cb in callbacks if isinstance(cb, dn.EarlyStopping)), None)
            net.fit(x_train, data.y_train, epochs=epochs, batch_size=batch_size, cost=cost, optimizer=optimizer,
                    validation_split=settings["val_split"], callbacks=callbacks, checkpoint=ckpt_path,
                    checkpoint_every=settings["checkpoint_every"], progress=not args.no_progress,
                    extra=_clean(checkpoint_block(settings, data_block, standardizer, n_classes)))
        else:
            callbacks = resumed_callbacks(dn, state)
            early = next((cb for cb in callbacks if isinstance(cb, dn.EarlyStopping)), None)
            net = dn.resume(args.resume, x_train, data.y_train, callbacks=callbacks, epochs=epochs, engine=engine,
                            progress=not args.no_progress, checkpoint=ckpt_path)
        scores = net.evaluate(x_test, data.y_test, cost=cost)
        history = net.history
    except (KeyboardInterrupt, TrainingDiverged) as exc:
        # the checkpoint this run wrote, else the one a resumed run started from
        written = ckpt_path if ckpt_path is not None and stamp(ckpt_path) != before else args.resume
        if net is None:
            # a resumed run: densenn.resume hands its network over with the exception
            net = getattr(exc, "network", None)
        if net is None:
            net, history = network_from_checkpoint(dn, written, engine)
        else:
            history = net.history
        if isinstance(exc, KeyboardInterrupt):
            # Ctrl-C: keep the network as trained so far instead of throwing the work away
            stopped = _stopped("interrupted", history, epochs, checkpoint=written)
            resume_from = written
        else:
            # fit has put back the weights from the start of the diverged epoch: keep those
            stopped = _stopped("diverged", history, epochs, _oneline(exc))
    seconds = time.perf_counter() - start
    best = _early_stopping_note(early, settings["early_stopping"], state)
    validation = {"split": settings["val_split"], "n_samples": n_val} if n_val else None
    options = {key: settings[key] for key in _TRAIN_KEYS}
    extra = {"cli": {
        "format": CLI_FORMAT, "data": data_block,
        "standardizer": standardizer.to_dict() if standardizer is not None else None,
        "n_classes": n_classes, "train": options, "validation": validation, "early_stopping": best,
        "checkpoint": os.path.abspath(ckpt_path) if ckpt_path else None,
        "resumed_from": os.path.abspath(args.resume) if args.resume else None,
        "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
        "stopped": stopped,
    }}
    model_path = net.save(os.path.join(out_dir, "model.dn"), extra=_clean(extra))
    plot_path = None
    if history is not None and history.epochs:
        plot_path = history.plot(os.path.join(out_dir, "training.png"), title=data_name)
    arch = _architecture(net)
    net.release()

    completed = history.epochs if history is not None else 0

    def last(key):
        return history[key][-1] if completed and history is not None else None

    result = {"data": data_name, "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
              "train_accuracy": last("accuracy"), "train_loss": last("loss"),
              "val_accuracy": last("val_accuracy"), "val_loss": last("val_loss"),
              "epochs": completed, "batch_size": batch_size, "seconds": seconds,
              "model_path": os.path.abspath(model_path),
              "plot_path": os.path.abspath(plot_path) if plot_path else None,
              "engine": engine.name, "dtype": settings["dtype"], "seed": settings["seed"],
              "optimizer": settings["optimizer"], "cost": cost, "standardize": settings["standardize"],
              "norm": settings["norm"], "dropout": settings["dropout"],
              "n_train": n_train, "n_val": n_val, "n_test": len(x_test), "val_split": settings["val_split"],
              "early_stopping": best, "checkpoint": extra["cli"]["checkpoint"],
              "resumed_from": extra["cli"]["resumed_from"],
              "architecture": arch, "history": history.to_dict() if history is not None else {},
              "stopped": stopped}
    if args.json:
        _print_json(result)
    if stopped is not None:
        return _report_stopped(stopped, model_path, plot_path, resume_from)
    if args.json:
        return 0
    print(f"test accuracy {scores['accuracy']:.4f}   test loss {scores['loss']:.4f}   "
          f"({completed} epoch{'s' if completed != 1 else ''} in {seconds:.1f} s)")
    if best is not None and best["best_epoch"] is not None:
        ended = f"stopped after epoch {best['stopped_epoch']}" if best["stopped_epoch"] else \
            f"did not stop (never {best['patience']} epochs without improvement)"
        print(f"early stopping: {ended}; kept the weights of epoch {best['best_epoch']} "
              f"(validation loss {best['best_val_loss']:.4f})")
    print(f"model: {model_path}")
    print(f"plot:  {plot_path}")
    return 0


#: the settings the model's ``cli`` block keeps as its ``train`` options
_TRAIN_KEYS = ("data", "layers", "activation", "norm", "dropout", "cost", "optimizer", "optimizer_name", "lr",
               "weight_decay", "clipnorm", "schedule", "epochs", "batch_size", "seed", "dtype", "engine", "standardize",
               "val_split", "early_stopping", "save_best", "checkpoint_every")


def _described(settings: dict, what: str) -> str:
    """The header's middle: the network (or the checkpoint resumed) and how it is trained."""
    epochs, schedule = settings["epochs"], settings["schedule"]
    decay, clip = settings["weight_decay"], settings.get("clipnorm")
    parts = [what, f"{settings['optimizer_name']} lr {settings['lr']:g}"
                   f"{'' if schedule == 'constant' else ' ' + schedule}"
                   f"{f', weight decay {decay:g}' if decay else ''}"
                   f"{f', clipnorm {clip:g}' if clip else ''}, "
                   f"{settings['cost']}, "
                   f"{epochs} epoch{'s' if epochs != 1 else ''}, batch {settings['batch_size']}"]
    if settings["early_stopping"] is not None:
        parts.append(f"early stopping (patience {settings['early_stopping']})")
    return "; ".join(parts)


def _early_stopping_note(early, patience, state) -> dict | None:
    """What early stopping did, epochs counted from 1 (None without --early-stopping).
    ``state``: the checkpoint a resumed run started from, which knows an earlier stop."""
    if early is None:
        return None
    stopped = early.stopped_epoch
    if stopped is None and state is not None and state.training["stopped"]:
        # a run resumed after its stop trains no epoch, and EarlyStopping forgets the stop when
        # training begins again: the checkpoint remembers it
        stopped = next((c["state"].get("stopped_epoch") for c in state.training["callbacks"]
                        if c["type"] == "EarlyStopping"), None)
    return {"patience": patience,
            "best_epoch": None if early.best_epoch is None else early.best_epoch + 1,
            "best_val_loss": early.best,
            "stopped_epoch": None if stopped is None else stopped + 1}


def _stopped(reason: str, history, epochs: int, message: str | None = None, checkpoint: str | None = None) -> dict:
    """The note saved in the model's ``cli`` block when training did not run to its end;
    ``history``: fit's History, the epochs completed before the stop."""
    completed = history.epochs if history is not None else 0
    note: dict = {"reason": reason, "epochs_completed": completed, "epochs_planned": epochs}
    if message is not None:
        note["message"] = message
    if reason == "interrupted":
        note["checkpoint"] = os.path.abspath(checkpoint) if checkpoint else None
    return note


def _report_stopped(stopped: dict, model_path: str, plot_path: str | None, checkpoint: str | None = None) -> int:
    """One line on stderr saying what stopped training, where the network went and (after a
    Ctrl-C) how to resume from ``checkpoint``; the exit status."""
    done, planned = stopped["epochs_completed"], stopped["epochs_planned"]
    plot = f" (training curves: {plot_path})" if plot_path else ""
    sys.stdout.flush()
    if stopped["reason"] == "interrupted":
        print(f"{PROG}: interrupted after {done} of {planned} epochs; the network as trained so far "
              f"is saved in {model_path}{plot}{resume_hint(checkpoint)}", file=sys.stderr)
        return 130
    message = stopped["message"]
    if f"epoch {done + 1}" not in message:
        message = f"training diverged in epoch {done + 1}: {message}"
    print(f"{PROG}: error: {message}; those weights are saved in {model_path}{plot}", file=sys.stderr)
    return 1
