"""The ``densenn`` command: train, evaluate, predict, info, bench.

Every subcommand prints a short human report, or with ``--json`` exactly one
JSON object on stdout (progress bars and notes go to stderr). Mistakes the user
can fix (a bad option, a missing file, an engine that cannot run here) end with
one line ``densenn: error: ...`` on stderr and exit status 2 (bad command line)
or 1 (anything found later); only unexpected failures show a traceback.

See ``docs/cli.md`` for every option and the JSON keys.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from densenn.backend.cpu_threads import usable_cores
from densenn.errors import DensennError, TrainingDiverged, is_real_number_dtype
from densenn.files import atomic_write, check_writable_folder

PROG = "densenn"
CLI_FORMAT = 1          # version of the "cli" block this command stores in a model's extra

#: per data set defaults for ``train`` (an option given on the command line wins)
TRAIN_DEFAULTS = {
    "digits": {"layers": [256, 128], "epochs": 30, "batch_size": 32, "schedule": "constant", "standardize": True,
               "weight_decay": 1e-3},
    "mnist": {"layers": [256, 128], "epochs": 15, "batch_size": 128, "schedule": "cosine", "standardize": False,
              "weight_decay": 0.0},
}
#: default learning rate per optimizer
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.01, "nesterov": 0.01, "adam": 1e-3, "adamw": 1e-3}
OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULE_NAMES = ("constant", "step", "linear", "cosine")
DIGITS_SPLIT = {"test_size": 0.2, "seed": 0}


# =========================================================================================
# argument parsing
# =========================================================================================
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not usage + message."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _number(kind, what: str, ok):
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else a message naming ``what``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, "a positive integer", lambda v: v > 0)
_nonnegative_int = _number(int, "a non-negative integer", lambda v: v >= 0)
_positive_float = _number(float, "a positive finite number", lambda v: v > 0)
_nonnegative_float = _number(float, "a non-negative finite number", lambda v: v >= 0)


def _layers(text: str) -> list[int]:
    """``"256,128"`` → [256, 128]; ``""`` or ``"none"`` → [] (no hidden layer)."""
    text = text.strip()
    if text.lower() in ("", "none", "0"):
        return []
    sizes = []
    for part in text.replace(" ", "").split(","):
        if not part.isdigit() or int(part) <= 0:
            raise argparse.ArgumentTypeError(
                f"expected hidden layer sizes as positive integers separated by commas (e.g. 256,128), got {text!r}")
        sizes.append(int(part))
    return sizes


def _bench_size(text: str) -> int:
    value = _positive_int(text)
    if value < 20:
        raise argparse.ArgumentTypeError(f"must be at least 20 (the third layer has N/10 units), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from densenn.activation import ACTIVATIONS
    from densenn.cost import COSTS

    parser = _Parser(prog=PROG, description="Fully-connected neural networks from scratch: train on digits or "
                                            "MNIST, evaluate, predict, inspect the engines, benchmark.")
    from densenn import __version__

    parser.add_argument("--version", action="version", version=f"densenn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p, engine_help="engine: cpu, cpu:numpy, cpu:numba, opencl[:P:D], cuda[:N] "
                              "(default: $DENSENN_ENGINE or cpu)"):
        p.add_argument("--engine", default=None, help=engine_help)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the report")

    def data_options(p, default_help):
        p.add_argument("--data", choices=("digits", "mnist"), default=None, help=default_help)
        p.add_argument("--data-dir", default=None, metavar="PATH",
                       help="folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...)")
        p.add_argument("--download", action="store_true",
                       help="without --data-dir: download MNIST (verified) into $DENSENN_DATA or ~/.cache/densenn")

    # -- train ------------------------------------------------------------------------------
    p = sub.add_parser("train", help="train a network and save it with its training curves",
                       description="Train an MLP on digits (default) or MNIST; write model.dn and training.png.")
    data_options(p, "data set (default digits: scikit-learn's 8×8 digits, no download)")
    p.add_argument("--layers", type=_layers, default=None, metavar="N[,N...]",
                   help="hidden layer sizes (default 256,128); the softmax output is added; 'none' for none")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu",
                   help="activation of the hidden layers (default relu)")
    p.add_argument("--cost", choices=sorted(COSTS), default=None,
                   help="cost (default: crossentropy, the softmax output's partner)")
    p.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="adam", help="optimizer (default adam)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: adam/adamw 0.001, sgd 0.1, momentum/nesterov 0.01)")
    p.add_argument("--weight-decay", type=_nonnegative_float, default=None,
                   help="L2 weight decay on the weights (default digits 0.001, mnist 0; adamw 0.01, decoupled)")
    p.add_argument("--schedule", choices=SCHEDULE_NAMES, default=None,
                   help="learning-rate schedule (default digits constant, mnist cosine)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default digits 30, mnist 15)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="mini-batch size (default digits 32, mnist 128)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the initial weights and the shuffling (default 0)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(default float32)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise the features with the training set's mean and std (default: on for "
                        "digits; off for mnist, whose pixels are only scaled to [0, 1])")
    p.add_argument("--out", default="runs", metavar="DIR", help="folder for model.dn and training.png (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    common(p)
    p.set_defaults(func=cmd_train)

    # -- evaluate ---------------------------------------------------------------------------
    p = sub.add_parser("evaluate", help="loss, accuracy and confusion matrix of a saved model on a test split",
                       description="Evaluate a saved model on the test split of its data set "
                                   "(with the preprocessing saved in the model).")
    p.add_argument("model", metavar="MODEL", help="a model file written by 'densenn train' or Network.save")
    data_options(p, "data set (default: the one the model was trained on, else digits)")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    # -- predict ----------------------------------------------------------------------------
    p = sub.add_parser("predict", help="class indices (or probabilities) for each row of a .npy/.csv file",
                       description="Predict with a saved model. The input holds one sample per row, as the "
                                   "data loaders give it (digits and mnist: pixels scaled to [0, 1]); the "
                                   "model's saved standardiser is applied.")
    p.add_argument("model", metavar="MODEL", help="a model file written by 'densenn train' or Network.save")
    p.add_argument("--input", required=True, metavar="FILE", help="samples: FILE.npy or FILE.csv, one per row")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write the predictions to FILE.npy or FILE.csv (default: print them)")
    p.add_argument("--proba", action="store_true", help="the network's outputs (class probabilities), not indices")
    p.add_argument("--no-preprocess", action="store_true",
                   help="the input is already preprocessed: do not apply the saved standardiser")
    common(p)
    p.set_defaults(func=cmd_predict)

    # -- info -------------------------------------------------------------------------------
    p = sub.add_parser("info", help="versions, CPU, BLAS, threads, and which engines work here",
                       description="What densenn runs on here: versions, CPU and BLAS, threads, engines "
                                   "(available or why not), OpenCL and CUDA devices.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the report")
    p.set_defaults(func=cmd_info)

    # -- bench ------------------------------------------------------------------------------
    p = sub.add_parser("bench", help="the seed's micro-benchmark: forward, training step and GEMMs alone",
                       description="x N×N through N→N/2 tanh → N/10 sigmoid → 10 sigmoid: time the forward "
                                   "pass, a training step (forward + backward) and the same GEMMs alone.")
    p.add_argument("--size", type=_bench_size, default=None, metavar="N",
                   help="N (default 4000 on the CPU, the seed scaled to 2 cores; 10000, the seed, on a GPU)")
    p.add_argument("--repeat", type=_positive_int, default=3, help="timed repeats after one warm-up (default 3)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(default float32)")
    common(p)
    p.set_defaults(func=cmd_bench)
    return parser


# =========================================================================================
# helpers
# =========================================================================================
def _say(args, *parts, **kw):
    """Human output: stdout normally, stderr under --json (stdout then holds only the JSON)."""
    print(*parts, file=sys.stderr if getattr(args, "json", False) else sys.stdout, **kw)


def _clean(value):
    """JSON-safe: NumPy scalars/arrays to Python, non-finite floats to None, unknown objects to str."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(_clean(obj), indent=2) + "\n")
    sys.stdout.flush()


def _oneline(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _engine(name):
    from densenn.backend import get_engine

    return get_engine(name)


def _load_dataset(name: str, data_dir, split: dict | None = None, download: bool = False):
    """The data set, not standardised: pixels scaled to [0, 1] (digits and MNIST alike)."""
    from densenn import datasets

    if name == "digits":
        split = split or DIGITS_SPLIT
        return datasets.load_digits(test_size=split.get("test_size", 0.2), seed=split.get("seed", 0),
                                    standardize=False)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DensennError(f"--data-dir {data_dir!r} is not a folder (it should hold the MNIST IDX files)")
    if data_dir is None and not download and not datasets.default_cache_dir().is_dir():
        raise DensennError(f"MNIST needs --data-dir PATH (the folder with the four IDX files) or --download "
                           f"(into {datasets.default_cache_dir()})")
    return datasets.load_mnist(data_dir=data_dir, standardize=False, flatten=True, download=download)


def _architecture(net) -> dict:
    layers = [{"units": layer.n_out, "activation": layer.activation.name} for layer in net.layers]
    params = sum(layer.n_in * layer.n_out + layer.n_out for layer in net.layers)
    text = " → ".join([str(net.n_in)] + [f"{l['units']} {l['activation']}" for l in layers])
    return {"n_in": net.n_in, "layers": layers, "params": params, "text": text}


def _make_optimizer(name: str, lr: float, weight_decay, schedule: str, default_decay: float = 0.0):
    from densenn.optimizer import SGD, Adam

    if name == "adamw":
        wd = 1e-2 if weight_decay is None else weight_decay
        return Adam(lr, weight_decay=wd, decoupled=True, schedule=schedule)
    wd = default_decay if weight_decay is None else weight_decay
    if name == "adam":
        return Adam(lr, weight_decay=wd, schedule=schedule)
    momentum = 0.0 if name == "sgd" else 0.9
    return SGD(lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=wd, schedule=schedule)


def _standardizer_from(extra: dict):
    """The standardiser saved by ``densenn train`` (or None)."""
    block = extra.get("cli") if isinstance(extra, dict) else None
    if not isinstance(block, dict):
        return None
    state = block.get("standardizer")
    if not state:
        return None
    from densenn.datasets import Standardizer

    try:
        return Standardizer.from_dict(state)
    except DensennError:
        raise
    except Exception as exc:
        raise DensennError(f"the model's saved standardiser is unreadable: {exc}") from None


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


# =========================================================================================
# train
# =========================================================================================
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

    specs = [dn.Dense(units, args.activation) for units in layers] + [dn.Dense(n_classes, "softmax")]
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
    options = {"data": data_name, "layers": layers, "activation": args.activation, "cost": cost,
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
    last = (lambda key: history[key][-1] if completed else None)
    result = {"data": data_name, "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
              "train_accuracy": last("accuracy"), "train_loss": last("loss"),
              "epochs": completed, "batch_size": batch_size, "seconds": seconds,
              "model_path": os.path.abspath(model_path),
              "plot_path": os.path.abspath(plot_path) if plot_path else None,
              "engine": engine.name, "dtype": args.dtype, "seed": args.seed,
              "optimizer": optimizer.config(), "cost": cost, "standardize": standardize,
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
          f"({history.epochs} epoch{'s' if history.epochs != 1 else ''} in {seconds:.1f} s)")
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


# =========================================================================================
# evaluate
# =========================================================================================
def cmd_evaluate(args) -> int:
    from densenn.io import load, load_extra
    from densenn.metrics import format_confusion_matrix

    extra = load_extra(args.model)           # DensennError for a missing or broken file
    net = load(args.model, engine=_engine(args.engine))
    block = extra.get("cli") if isinstance(extra.get("cli"), dict) else {}
    saved = block.get("data") if isinstance(block.get("data"), dict) else {}
    data_name = args.data or saved.get("name") or "digits"
    if data_name not in TRAIN_DEFAULTS:
        raise DensennError(f"the model names an unknown data set {data_name!r}; pass --data digits|mnist")
    data_dir = args.data_dir
    if data_dir is None and data_name == "mnist" and saved.get("name") == "mnist":
        data_dir = saved.get("data_dir")
    if args.data_dir is not None and data_name != "mnist":
        raise DensennError("--data-dir is for --data mnist; the digits ship with scikit-learn")
    split = {k: saved[k] for k in ("test_size", "seed") if k in saved} if saved.get("name") == data_name else None

    data = _load_dataset(data_name, data_dir, split, download=args.download)
    x_test = data.x_test
    standardizer = _standardizer_from(extra)
    if standardizer is not None:
        x_test = standardizer.transform(x_test)
    elif not block and data_name == "digits":
        # a model saved by Network.save without our block: the loader's own default preprocessing
        from densenn import datasets

        x_test = datasets.load_digits(standardize=True).x_test
    if x_test.shape[1] != net.n_in:
        raise DensennError(f"model {args.model!r} takes {net.n_in} features but {data_name} has "
                           f"{x_test.shape[1]}; pass the --data it was trained on")
    if net.n_out != int(data.n_classes):
        raise DensennError(f"model {args.model!r} has {net.n_out} outputs but {data_name} has "
                           f"{data.n_classes} classes")
    start = time.perf_counter()
    scores = net.evaluate(x_test, data.y_test)
    counts = net.confusion_matrix(x_test, data.y_test)
    seconds = time.perf_counter() - start
    result = {"model_path": os.path.abspath(args.model), "data": data_name, "n_samples": len(x_test),
              "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
              "confusion_matrix": counts, "engine": net.engine.name, "dtype": net.dtype.name,
              "architecture": _architecture(net), "seconds": seconds}
    net.release()
    if args.json:
        _print_json(result)
        return 0
    print(f"{args.model}: {result['architecture']['text']} on the {data_name} test split ({len(x_test)} samples)")
    print(f"test accuracy {scores['accuracy']:.4f}   test loss {scores['loss']:.4f}")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(format_confusion_matrix(counts))
    return 0


# =========================================================================================
# predict
# =========================================================================================
def _csv_rows(path: str) -> np.ndarray:
    """The numbers of a comma-separated file, one sample per line.

    The first line is skipped as a header only when none of its fields is a number; any
    other line that is not comma-separated numbers, or has another count of them than the
    first row, is a DensennError naming the file and the line."""
    def fail(lineno: int, why: str):
        raise DensennError(f"input file {path!r}, line {lineno}: {why}; expected comma-separated numbers, "
                           f"the same count on every row")

    def number(text: str):
        try:
            return float(text)
        except ValueError:
            return None

    rows, width = [], None
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                fields = [field.strip() for field in line.split(",")]
                values = [number(field) for field in fields]
                if lineno == 1 and all(v is None for v in values) and len(fields) > 1:
                    continue        # a header: names, not numbers
                bad = next((field for field, v in zip(fields, values) if v is None), None)
                if bad is not None:
                    fail(lineno, f"{bad[:40]!r} is not a number")
                if width is None:
                    width = len(values)
                elif len(values) != width:
                    fail(lineno, f"{len(values)} values where the first row has {width}")
                rows.append(values)
    except UnicodeDecodeError:
        raise DensennError(f"input file {path!r} is not a text CSV file") from None
    if not rows:
        raise DensennError(f"input file {path!r} holds no rows of numbers")
    return np.array(rows, dtype=np.float64)


def _read_samples(path: str) -> np.ndarray:
    if os.path.isdir(path):
        raise DensennError(f"input file {path!r} is a folder; expected a .npy or .csv file")
    if not os.path.isfile(path):
        raise DensennError(f"input file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DensennError(f"input file {path!r} is not a readable .npy array: {_oneline(exc)}") from None
    elif ext == ".csv":
        arr = _csv_rows(path)
    else:
        raise DensennError(f"input file {path!r}: expected a .npy or .csv file")
    if not is_real_number_dtype(arr.dtype):
        raise DensennError(f"input file {path!r} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _write_predictions(path: str, result: np.ndarray, proba: bool) -> None:
    """``result`` into exactly the file ``path`` (.npy or .csv, any case), atomically."""
    with atomic_write(path, "--output") as tmp:
        if path.lower().endswith(".npy"):
            with open(tmp, "wb") as f:      # np.save to a name would append ".npy" to "OUT.NPY"
                np.save(f, result)
        else:
            np.savetxt(tmp, result.reshape(len(result), -1), delimiter=",", fmt="%.8g" if proba else "%d")


def _as_rows(arr: np.ndarray, n_in: int, path: str) -> np.ndarray:
    """Samples as (n, n_in): a single sample (n_in,) and images (n, h, w) with h·w = n_in are accepted."""
    if arr.ndim == 1 and arr.shape[0] == n_in:
        arr = arr.reshape(1, n_in)
    elif arr.ndim > 2 and int(np.prod(arr.shape[1:])) == n_in:
        arr = arr.reshape(arr.shape[0], n_in)
    if arr.ndim != 2 or arr.shape[1] != n_in or arr.shape[0] == 0:
        raise DensennError(f"input file {path!r} has shape {arr.shape}; the model expects rows of "
                           f"{n_in} features, shape (n_samples, {n_in})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DensennError(f"input file {path!r} contains NaN or infinite values")
    return arr.astype(np.float64, copy=False)


def cmd_predict(args) -> int:
    from densenn.io import load, load_extra

    if args.output is not None:
        if os.path.splitext(args.output)[1].lower() not in (".npy", ".csv"):
            raise DensennError(f"--output {args.output!r}: expected a .npy or .csv file name")
        check_writable_folder(args.output, "--output")    # before the prediction, which may be long
    extra = load_extra(args.model)
    net = load(args.model, engine=_engine(args.engine))
    x = _as_rows(_read_samples(args.input), net.n_in, args.input)
    if not args.no_preprocess:
        standardizer = _standardizer_from(extra)
        if standardizer is not None:
            x = standardizer.transform(x)
    if args.proba:
        result = net.predict(x).astype(np.float64)
    else:
        result = net.predict_classes(x).astype(np.int64)
    net.release()
    if args.output is not None:
        _write_predictions(args.output, result, args.proba)
    if args.json:
        _print_json({"model_path": os.path.abspath(args.model), "input": os.path.abspath(args.input),
                     "n_samples": len(result), "output": os.path.abspath(args.output) if args.output else None,
                     "probabilities" if args.proba else "predictions": result})
    elif args.output is not None:
        print(f"wrote {'probabilities' if args.proba else 'class indices'} for {len(result)} samples "
              f"to {args.output}")
    else:
        if args.proba:
            for row in result:
                print(",".join(f"{v:.6g}" for v in row))
        else:
            print("\n".join(str(int(v)) for v in result))
    return 0


# =========================================================================================
# info
# =========================================================================================
def _guard(fn, default=None):
    """fn(), or an 'error: ...' string: info must never crash."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - anything a broken install can throw
        return default if default is not None else f"error: {type(exc).__name__}: {_oneline(exc)}"


def _version(module: str):
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        try:
            mod = __import__(module)
            return getattr(mod, "__version__", "installed")
        except Exception:
            return None


def _blas_info() -> dict:
    """BLAS and thread pools: threadpoolctl when installed, else NumPy's build configuration."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        __import__("scipy.linalg")   # load SciPy's BLAS so its pool is listed too
        from densenn.backend import cpu_mkl
        cpu_mkl.load()               # and MKL's, when installed

        pools = []
        for pool in threadpool_info():
            pools.append({k: pool.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                                   "num_threads", "threading_layer", "architecture", "filepath")
                          if pool.get(k) is not None})
        return {"source": "threadpoolctl", "pools": pools}
    facts: dict = {"source": "numpy.show_config"}
    try:
        config = np.show_config(mode="dicts")
        deps = config.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            if key in deps:
                facts[key] = {k: deps[key].get(k) for k in ("name", "version", "found", "openblas configuration")
                              if deps[key].get(k) is not None}
    except Exception as exc:  # older NumPy: no mode="dicts"
        facts["note"] = f"threadpoolctl not installed and NumPy's config unreadable ({_oneline(exc)})"
    return facts


def _threads_info(blas: dict) -> dict:
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "NUMBA_NUM_THREADS", "DENSENN_ENGINE", "DENSENN_NUMBA") if k in os.environ}
    out: dict = {"env": env}
    pools = blas.get("pools") or []
    blas_threads = [p.get("num_threads") for p in pools if p.get("user_api") == "blas"]
    if blas_threads:
        out["blas"] = max(t for t in blas_threads if t is not None)
    omp = [p.get("num_threads") for p in pools if p.get("user_api") == "openmp"]
    if omp:
        out["openmp"] = max(t for t in omp if t is not None)
    try:
        import numba

        out["numba"] = int(numba.config.NUMBA_NUM_THREADS)
    except Exception:
        pass
    return out


def _opencl_info():
    import importlib

    try:
        module = importlib.import_module("densenn.backend.opencl")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("densenn"):
            return {"available": False, "reason": "the OpenCL engine is not part of this densenn build"}
        return {"available": False, "reason": f"needs the Python package {exc.name!r}: pip install 'densenn[opencl]'"}
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {_oneline(exc)}"}
    list_devices = getattr(module, "list_devices", None)
    if list_devices is None:
        return {"available": None, "reason": "densenn.backend.opencl has no list_devices()"}
    try:
        devices = list_devices()
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {_oneline(exc)}"}
    return {"devices": list(devices), "reason": getattr(devices, "reason", None)}


def _cuda_info():
    import importlib

    try:
        module = importlib.import_module("densenn.backend.cuda")
        describe = getattr(module, "describe")
    except Exception as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {_oneline(exc)}"}
    return describe()


def collect_info() -> dict:
    info: dict = {}
    info["densenn"] = _guard(lambda: __import__("densenn").__version__)
    info["python"] = _guard(lambda: f"{platform.python_implementation()} {platform.python_version()}")
    info["executable"] = sys.executable
    info["platform"] = _guard(platform.platform)
    info["machine"] = _guard(platform.machine)
    info["processor"] = _guard(lambda: platform.processor() or None)
    for name in ("numpy", "scipy", "scikit-learn", "numba", "threadpoolctl", "safetensors", "matplotlib",
                 "tqdm", "pyopencl", "pyclblast", "cupy-cuda12x"):
        info.setdefault("packages", {})[name] = _guard(lambda name=name: _version(name))
    info["cpu_count"] = _guard(os.cpu_count)
    info["usable_cpus"] = _guard(usable_cores)
    blas = _guard(_blas_info)
    info["blas"] = blas
    info["threads"] = _guard(lambda: _threads_info(blas if isinstance(blas, dict) else {}))

    def engines():
        from densenn.backend import available_engines

        return {kind: {"available": reason is None, "reason": reason}
                for kind, reason in available_engines().items()}

    info["engines"] = _guard(engines)
    info["default_engine"] = _guard(lambda: __import__("densenn.backend", fromlist=["x"]).default_engine_name())
    info["cpu_engine"] = _guard(lambda: repr(_engine("cpu")))
    info["opencl"] = _guard(_opencl_info)
    info["cuda"] = _guard(_cuda_info)
    return _clean(info)


def _print_info(info: dict) -> None:
    def show(label, value):
        print(f"{label:<16}{value}")

    packages = info.get("packages") or {}
    show("densenn", info.get("densenn"))
    show("python", f"{info.get('python')} ({info.get('executable')})")
    show("platform", info.get("platform"))
    show("packages", ", ".join(f"{k} {v}" for k, v in packages.items() if v and not str(v).startswith("error")))
    show("missing", ", ".join(k for k, v in packages.items() if not v) or "-")
    show("cpus", f"{info.get('cpu_count')} ({info.get('usable_cpus')} usable by this process)")
    blas = info.get("blas")
    if isinstance(blas, dict) and blas.get("pools") is not None:
        for pool in blas["pools"]:
            show("thread pool", f"{pool.get('user_api')}: {pool.get('internal_api')} {pool.get('version') or ''} "
                                f"{pool.get('num_threads')} threads"
                                + (f", {pool.get('architecture')}" if pool.get("architecture") else "")
                                + (f" ({pool.get('filepath')})" if pool.get("filepath") else ""))
    elif isinstance(blas, dict):
        for key in ("blas", "lapack"):
            if key in blas:
                show(key, ", ".join(f"{k} {v}" for k, v in blas[key].items()))
        if "note" in blas:
            show("blas", blas["note"])
    else:
        show("blas", blas)
    threads = info.get("threads")
    if isinstance(threads, dict):
        parts = [f"{k} {v}" for k, v in threads.items() if k != "env"]
        parts += [f"{k}={v}" for k, v in (threads.get("env") or {}).items()]
        show("threads", ", ".join(parts) or "-")
    show("default engine", f"{info.get('default_engine')} ({info.get('cpu_engine')})")
    engines = info.get("engines")
    if isinstance(engines, dict):
        for kind, state in engines.items():
            show(f"engine {kind}", "available" if state.get("available") else f"not available: {state.get('reason')}")
    else:
        show("engines", engines)
    opencl = info.get("opencl")
    if isinstance(opencl, dict) and "devices" in opencl:
        devices = opencl["devices"]
        if isinstance(devices, (list, tuple)) and devices:
            for dev in devices:
                show("opencl", dev if not isinstance(dev, dict) else ", ".join(f"{k} {v}" for k, v in dev.items()))
        else:
            show("opencl", f"no devices ({devices})" if devices else "no devices")
    elif isinstance(opencl, dict):
        show("opencl", f"not available: {opencl.get('reason')}")
    else:
        show("opencl", opencl)
    cuda = info.get("cuda")
    if isinstance(cuda, dict):
        if cuda.get("devices"):
            for dev in cuda["devices"]:
                mem = dev.get("memory_bytes")
                show("cuda", f"device {dev.get('id')}: {dev.get('name')}, compute {dev.get('compute_capability')}"
                             + (f", {mem / 2**30:.1f} GiB" if mem else "")
                             + (f" ({dev['error']})" if dev.get("error") else ""))
        versions = ", ".join(f"{k} {cuda[k]}" for k in ("cupy", "cuda_runtime", "cuda_driver", "nvrtc") if cuda.get(k))
        state = "available" if cuda.get("available") else f"not available: {cuda.get('reason')}"
        show("cuda", state + (f" ({versions})" if versions else ""))
    else:
        show("cuda", cuda)


def cmd_info(args) -> int:
    info = collect_info()
    if args.json:
        _print_json(info)
    else:
        _print_info(info)
    return 0


# =========================================================================================
# bench
# =========================================================================================
def _median_ms(engine, fn, repeat: int) -> float:
    """Median wall time of fn() in ms after one warm-up; synchronises so device work is counted."""
    fn()
    engine.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        engine.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_bench(engine, n: int, repeat: int, dtype) -> dict:
    """The seed's micro-benchmark on ``engine``: see ``densenn bench --help``."""
    from densenn.layer import DenseInference, DenseTraining

    sizes = [n, n // 2, n // 10, 10]
    activations = ["tanh", "sigmoid", "sigmoid"]
    rng = np.random.default_rng(0)

    def fresh(host):
        host = np.ascontiguousarray(host, dtype=dtype)
        return engine.upload(host, engine.empty(host.shape, dtype))

    x_host = rng.random((n, n), dtype=np.float32) * 2 - 1
    owned = [fresh(x_host)]
    x = owned[0]
    layers = []
    for n_in, n_out, act in zip(sizes, sizes[1:], activations):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) / np.float32(np.sqrt(n_in))
        b = rng.standard_normal(n_out).astype(np.float32) * 0.1
        layers.append(DenseInference(engine, n_in, n_out, act, dtype, w=fresh(w), b=fresh(b)))
    t1 = DenseTraining(layers[0], x)
    t2 = DenseTraining.after(layers[1], t1)
    t3 = DenseTraining.after(layers[2], t2)
    training = [t1, t2, t3]
    scratch = {id(t): engine.empty(t.x.shape, dtype) for t in (t2, t3)}
    try:
        def forward():
            for t in training:
                t.forward()

        def step():
            # the seed's (forward 1) (forward 2) (forward 3) (backward 3) (backward 2) (backward 1)
            forward()
            t3.backward()                  # the signal: t3's own output, as in the seed
            t2.backward()
            t1.backward(propagate=False)   # nothing below the first layer

        def gemms():
            # the step's GEMMs alone; the signal GEMMs write into scratch, not into the layers' inputs
            for t in training:
                engine.gemm(1.0, t.x, t.w, 0.0, t.z, trans_b=True)
            for t in reversed(training):
                engine.gemm(1.0, t.z, t.x, 0.0, t.dw, trans_a=True)
                if t is not t1:
                    engine.gemm(1.0, t.z, t.w, 0.0, scratch[id(t)])

        # check the forward pass on the first rows against float64 NumPy before timing
        forward()
        rows = min(64, n)
        h = x_host[:rows].astype(np.float64)
        for layer, act in zip(layers, activations):
            h = h @ engine.to_host(layer.w).astype(np.float64).T + engine.to_host(layer.b).astype(np.float64)
            h = np.tanh(h) if act == "tanh" else 1 / (1 + np.exp(-h))
        err = float(np.abs(engine.to_host(t3.a)[:rows] - h).max())
        tol = 1e-3 if dtype == np.float32 else 1e-10
        if not err < tol:
            raise DensennError(f"bench check failed: the forward pass differs from NumPy by {err:.2e} "
                               f"(tolerance {tol:g}) on engine {engine.name}")

        per_layer = [2.0 * n * a * b for a, b in zip(sizes, sizes[1:])]
        flop_forward = sum(per_layer)
        flop_step = 2 * flop_forward + sum(per_layer[1:])
        forward_ms = _median_ms(engine, forward, repeat)
        step_ms = _median_ms(engine, step, repeat)
        gemm_ms = _median_ms(engine, gemms, repeat)
        nbytes = sum(engine.nbytes(a) for a in owned) + sum(l.nbytes() for l in layers) \
            + sum(sum(t.nbytes().values()) for t in training)
    finally:
        for buf in scratch.values():
            engine.release(buf)
        for obj in training + layers:
            obj.release()
        engine.release(x)
    return {"size": n, "layers": sizes, "activations": activations, "repeat": repeat,
            "engine": engine.name, "dtype": np.dtype(dtype).name,
            "forward_ms": forward_ms, "step_ms": step_ms, "gemm_ms": gemm_ms,
            "overhead_ratio": step_ms / gemm_ms, "gemm_share": gemm_ms / step_ms,
            "gflop_forward": flop_forward / 1e9, "gflop_step": flop_step / 1e9,
            "forward_gflops": flop_forward / forward_ms / 1e6, "step_gflops": flop_step / step_ms / 1e6,
            "gemm_gflops": flop_step / gemm_ms / 1e6, "check_max_error": err, "memory_bytes": nbytes}


def cmd_bench(args) -> int:
    from densenn.backend import check_dtype

    engine = _engine(args.engine)
    dtype = check_dtype(engine, args.dtype)
    n = args.size or (4000 if engine.name.startswith("cpu") else 10000)
    if not args.json:
        print(f"densenn bench: x {n}×{n}, {n}→{n // 2} tanh → {n // 10} sigmoid → 10 sigmoid; "
              f"engine {engine.name} ({engine!r}), {dtype.name}; median of {args.repeat} after one warm-up")
    result = run_bench(engine, n, args.repeat, dtype)
    if engine.name.startswith("cpu"):
        blas = _guard(_blas_info)
        if isinstance(blas, dict):
            result["blas_threads"] = _threads_info(blas).get("blas")
    if args.json:
        _print_json(result)
        return 0
    print(f"{'':<32}{'ms':>10}{'GFLOP/s':>10}")
    for label, key, flop in (("forward", "forward_ms", result["gflop_forward"]),
                             ("training step (fwd + bwd)", "step_ms", result["gflop_step"]),
                             ("the step's GEMMs alone", "gemm_ms", result["gflop_step"])):
        print(f"{label:<32}{result[key]:>10.2f}{flop * 1e3 / result[key]:>10.1f}")
    print(f"overhead ratio (step / GEMMs): {result['overhead_ratio']:.3f}; GEMMs are "
          f"{100 * result['gemm_share']:.0f}% of the step ({result['gflop_step']:.2f} GFLOP per step, "
          f"forward check max |error| {result['check_max_error']:.1e})")
    return 0


# =========================================================================================
# entry point
# =========================================================================================
def main(argv=None) -> int:
    """Run the ``densenn`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:    # argparse: --help/--version (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "func", None) is None:
        print(f"{PROG}: error: missing command; choose one of train, evaluate, predict, info, bench "
              f"(see '{PROG} --help')", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: not an error of ours; silence the final flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (DensennError, OSError) as exc:
        sys.stdout.flush()
        print(f"{PROG}: error: {_oneline(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
