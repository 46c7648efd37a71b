"""``densenn train``: train an MLP on digits or MNIST; save model.dn and training.png."""
from __future__ import annotations

import os
import sys
import time

from densenn.cli.common import (
    CLI_FORMAT,
    DEFAULT_LR,
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
)
from densenn.errors import DensennError, TrainingDiverged
from densenn.files import check_writable_folder


def _make_optimizer(name: str, lr: float, weight_decay, schedule: str, default_decay: float = 0.0):
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

    data_name = args.data or "digits"
    defaults = TRAIN_DEFAULTS[data_name]
    layers = defaults["layers"] if args.layers is None else args.layers
    epochs = args.epochs or defaults["epochs"]
    batch_size = args.batch_size or defaults["batch_size"]
    schedule = args.schedule or defaults["schedule"]
    standardize = defaults["standardize"] if args.standardize is None else args.standardize
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.data_dir is not None and data_name != "mnist":
        raise DensennError("--data-dir is for --data mnist; the digits ship with scikit-learn")

    engine = _engine(args.engine)          # fail fast, before loading data
    from densenn.backend import check_dtype

    check_dtype(engine, args.dtype)
    out_dir = args.out
    _prepare_out_folder(out_dir)
    data = _load_dataset(data_name, args.data_dir, download=args.download)
    x_train, x_test = data.x_train, data.x_test
    standardizer = None
    if standardize:
        from densenn.datasets import Standardizer

        standardizer = Standardizer().fit(x_train)
        x_train, x_test = standardizer.transform(x_train), standardizer.transform(x_test)
    n_classes = int(data.n_classes)

    norm = getattr(args, "norm", "none")
    dropout = float(getattr(args, "dropout", 0.0))
    if norm == "batch":
        _check_batchnorm_batches(batch_size, len(x_train))
    specs = _hidden_layers(dn, layers, args.activation, norm, dropout) + [dn.Dense(n_classes, "softmax")]
    net = dn.Network(x_train.shape[1], specs, engine=engine, dtype=args.dtype, seed=args.seed)
    cost = args.cost or net.default_cost()
    optimizer = _make_optimizer(args.optimizer, lr, args.weight_decay, schedule, defaults["weight_decay"])
    arch = _architecture(net)
    _say(args, f"densenn train: {data_name} ({len(x_train)} training, {len(x_test)} test samples, "
               f"{n_classes} classes{', standardised' if standardize else ''}); {arch['text']} "
               f"({arch['params']:,} params); {args.optimizer} lr {lr:g}"
               f"{'' if schedule == 'constant' else ' ' + schedule}"
               f"{f', weight decay {optimizer.weight_decay:g}' if optimizer.weight_decay else ''}, {cost}, "
               f"{epochs} epoch{'s' if epochs != 1 else ''}, batch {batch_size}; "
               f"engine {engine.name}, {args.dtype}")

    start = time.perf_counter()
    stopped = None
    scores = {"accuracy": None, "loss": None}
    try:
        history = net.fit(x_train, data.y_train, epochs=epochs, batch_size=batch_size, cost=cost,
                          optimizer=optimizer, validation_data=(x_test, data.y_test),
                          progress=not args.no_progress)
        scores = net.evaluate(x_test, data.y_test, cost=cost)
    except KeyboardInterrupt:
        # Ctrl-C: keep the network as trained so far instead of throwing the work away
        stopped = _stopped("interrupted", net, epochs)
    except TrainingDiverged as exc:
        # fit has put back the weights from the start of the diverged epoch: keep those
        stopped = _stopped("diverged", net, epochs, _oneline(exc))
    history = net.history
    seconds = time.perf_counter() - start
    options = {"data": data_name, "layers": layers, "activation": args.activation, "norm": norm,
               "dropout": dropout, "cost": cost,
               "optimizer": optimizer.config(), "optimizer_name": args.optimizer, "epochs": epochs,
               "batch_size": batch_size, "seed": args.seed, "dtype": args.dtype, "engine": engine.name,
               "standardize": standardize}
    extra = {"cli": {
        "format": CLI_FORMAT,
        "data": {"name": data_name, **(DIGITS_SPLIT if data_name == "digits" else {}),
                 "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None},
        "standardizer": standardizer.to_dict() if standardizer is not None else None,
        "n_classes": n_classes,
        "train": options,
        "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
        "stopped": stopped,
    }}
    model_path = net.save(os.path.join(out_dir, "model.dn"), extra=_clean(extra))
    plot_path = None
    if history is not None and history.epochs:
        plot_path = history.plot(os.path.join(out_dir, "training.png"), title=data_name)
    net.release()

    completed = history.epochs if history is not None else 0

    def last(key):
        return history[key][-1] if completed and history is not None else None

    result = {"data": data_name, "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
              "train_accuracy": last("accuracy"), "train_loss": last("loss"),
              "epochs": completed, "batch_size": batch_size, "seconds": seconds,
              "model_path": os.path.abspath(model_path),
              "plot_path": os.path.abspath(plot_path) if plot_path else None,
              "engine": engine.name, "dtype": args.dtype, "seed": args.seed,
              "optimizer": optimizer.config(), "cost": cost, "standardize": standardize,
              "norm": norm, "dropout": dropout,
              "n_train": len(x_train), "n_test": len(x_test),
              "architecture": arch, "history": history.to_dict() if history is not None else {},
              "stopped": stopped}
    if args.json:
        _print_json(result)
    if stopped is not None:
        return _report_stopped(stopped, model_path, plot_path)
    if args.json:
        return 0
    print(f"test accuracy {scores['accuracy']:.4f}   test loss {scores['loss']:.4f}   "
          f"({completed} epoch{'s' if completed != 1 else ''} in {seconds:.1f} s)")
    print(f"model: {model_path}")
    print(f"plot:  {plot_path}")
    return 0


def _stopped(reason: str, net, epochs: int, message: str | None = None) -> dict:
    """The note saved in the model's ``cli`` block when training did not run to its end."""
    history = net.history      # fit's History: the epochs completed before the stop
    completed = history.epochs if history is not None else 0
    note = {"reason": reason, "epochs_completed": completed, "epochs_planned": epochs}
    if message is not None:
        note["message"] = message
    return note


def _report_stopped(stopped: dict, model_path: str, plot_path: str | None) -> int:
    """One line on stderr saying what stopped training and where the network went; the exit status."""
    done, planned = stopped["epochs_completed"], stopped["epochs_planned"]
    plot = f" (training curves: {plot_path})" if plot_path else ""
    sys.stdout.flush()
    if stopped["reason"] == "interrupted":
        print(f"{PROG}: interrupted after {done} of {planned} epochs; the network as trained so far "
              f"is saved in {model_path}{plot}", file=sys.stderr)
        return 130
    message = stopped["message"]
    if f"epoch {done + 1}" not in message:
        message = f"training diverged in epoch {done + 1}: {message}"
    print(f"{PROG}: error: {message}; those weights are saved in {model_path}{plot}", file=sys.stderr)
    return 1
