"""The ``densenn`` command line: argparse, with one-line usage errors (exit status 2)."""
from __future__ import annotations

import argparse
import math

from densenn.cli.bench import cmd_bench
from densenn.cli.common import NORM_NAMES, OPTIMIZER_NAMES, PROG, SCHEDULE_NAMES
from densenn.cli.evaluate import cmd_evaluate
from densenn.cli.export import cmd_export
from densenn.cli.info import cmd_info
from densenn.cli.predict import cmd_predict
from densenn.cli.train import cmd_train


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
_dropout_rate = _number(float, "a dropout rate in [0, 1) (the fraction of values dropped)", lambda v: 0 <= v < 1)
_fraction = _number(float, "a fraction in (0, 1) of the training data (e.g. 0.1)", lambda v: 0 < v < 1)


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
    from densenn.seedbench import MIN_SIZE

    value = _positive_int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE} (the third layer has N/10 units), "
                                         f"got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from densenn import __version__
    from densenn.nn.activation import ACTIVATIONS
    from densenn.nn.cost import COSTS

    parser = _Parser(prog=PROG, description="Fully-connected neural networks from scratch: train on digits or "
                                            "MNIST, evaluate, predict, inspect the engines, benchmark.")
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
                       description="Train an MLP on digits (default) or MNIST; write model.dn, training.png "
                                   "and a checkpoint to resume from (train.ckpt).")
    data_options(p, "data set (default digits: scikit-learn's 8×8 digits, no download)")
    # options that fix what is trained default to None here, so that --resume can tell the ones
    # given on the command line (which must agree with the checkpoint) from those left out
    p.add_argument("--layers", type=_layers, default=None, metavar="N[,N...]",
                   help="hidden layer sizes (default 256,128); the softmax output is added; 'none' for none")
    # the activation registry as it stands now: activations registered later are choices too
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None,
                   help="activation of the hidden layers (default relu)")
    p.add_argument("--norm", choices=NORM_NAMES, default=None,
                   help="normalise each hidden layer's linear part before its activation: batch "
                        "(BatchNorm) or layer (LayerNorm) (default none)")
    p.add_argument("--dropout", type=_dropout_rate, default=None, metavar="RATE",
                   help="dropout after each hidden layer, the fraction in [0, 1) of values dropped in "
                        "training (default 0: none)")
    p.add_argument("--cost", choices=sorted(COSTS), default=None,
                   help="cost (default: crossentropy, the softmax output's partner)")
    p.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=None, help="optimizer (default adam)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: adam/adamw 0.001, sgd 0.1, momentum/nesterov 0.01)")
    p.add_argument("--weight-decay", type=_nonnegative_float, default=None,
                   help="L2 weight decay on the weights (default digits 0.001, mnist 0; adamw 0.01, decoupled)")
    p.add_argument("--clipnorm", type=_positive_float, default=None, metavar="C",
                   help="clip the gradients' global L2 norm to C at every step (default: no clipping)")
    p.add_argument("--schedule", choices=SCHEDULE_NAMES, default=None,
                   help="learning-rate schedule (default digits constant, mnist cosine)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs (default digits 30, mnist 15); with --resume, the epochs in all to train to")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="mini-batch size (default digits 32, mnist 128)")
    p.add_argument("--seed", type=_nonnegative_int, default=None,
                   help="seed of the initial weights, the shuffling and the validation split (default 0)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None, help="(default float32)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise the features with the training set's mean and std (default: on for "
                        "digits; off for mnist, whose pixels are only scaled to [0, 1])")
    p.add_argument("--val-split", type=_fraction, default=None, metavar="F",
                   help="hold out the fraction F of the training data, stratified, as the validation set "
                        "(default 0.1 with --early-stopping, else none); the test set is only for the "
                        "final report")
    p.add_argument("--early-stopping", type=_nonnegative_int, default=None, metavar="PATIENCE",
                   help="stop when the validation loss has not improved for PATIENCE epochs and keep the "
                        "weights of its best epoch (default: off)")
    p.add_argument("--save-best", action="store_true", default=None,
                   help="also save the model of the best epoch (lowest validation loss) to OUT/best.dn as "
                        "training goes (validates on --val-split, default 0.1)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a checkpoint to resume from at every epoch's end and on Ctrl-C (default "
                        "OUT/train.ckpt; with --resume, the checkpoint resumed); 'none' for none")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                   help="also write the checkpoint every N training steps (default: at epoch ends only)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run of this checkpoint with the options stored in it (--epochs, "
                        "--engine, --out, --checkpoint, --no-progress and --json may be given)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for model.dn, training.png and train.ckpt (default runs/; with --resume, "
                        "the resumed run's)")
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

    # -- export -----------------------------------------------------------------------------
    p = sub.add_parser("export", help="write a saved model as an ONNX graph (needs the onnx package)",
                       description="Write a saved model's inference form as a standard ONNX graph: input "
                                   "'input' (N, n_in), output 'output' (N, n_out). See docs/onnx.md.")
    p.add_argument("model", metavar="MODEL", help="a model file written by 'densenn train' or Network.save")
    p.add_argument("output", metavar="OUTPUT", help="the ONNX file to write (e.g. model.onnx)")
    p.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset (default 21; 17 or newer)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the report")
    p.set_defaults(func=cmd_export)
    return parser
