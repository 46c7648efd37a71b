"""The ``densenn`` command: train, evaluate, predict, info, bench, export.

Every subcommand prints a short human report, or with ``--json`` exactly one
JSON object on stdout (progress bars and notes go to stderr). Mistakes the user
can fix (a bad option, a missing file, an engine that cannot run here) end with
one line ``densenn: error: ...`` on stderr and exit status 2 (bad command line)
or 1 (anything found later); only unexpected failures show a traceback.

One module per subcommand (``train``, ``evaluate``, ``predict``, ``info``,
``bench``, ``export``), the command line in ``parser``, what they share in ``common``; ``workflow``
holds train's run settings, validation split, checkpoint and ``--resume``.
See ``docs/cli.md`` for every option and the JSON keys.
"""
from __future__ import annotations

import os
import sys

from densenn.cli.bench import cmd_bench, run_bench
from densenn.cli.common import (
    CLI_FORMAT,
    DEFAULT_LR,
    DIGITS_SPLIT,
    NORM_NAMES,
    OPTIMIZER_NAMES,
    PROG,
    SCHEDULE_NAMES,
    TRAIN_DEFAULTS,
    _architecture,
    _clean,
    _engine,
    _guard,
    _load_dataset,
    _oneline,
    _print_json,
    _say,
    _standardizer_from,
)
from densenn.cli.evaluate import cmd_evaluate
from densenn.cli.info import _blas_info, _print_info, _threads_info, _version, cmd_info, collect_info
from densenn.cli.parser import (
    _bench_size,
    _dropout_rate,
    _layers,
    _nonnegative_float,
    _nonnegative_int,
    _Parser,
    _positive_float,
    _positive_int,
    build_parser,
)
from densenn.cli.predict import _as_rows, _csv_rows, _read_samples, _write_predictions, cmd_predict
from densenn.cli.train import (
    _check_batchnorm_batches,
    _hidden_layers,
    _make_optimizer,
    _prepare_out_folder,
    _report_stopped,
    _stopped,
    cmd_train,
)
from densenn.errors import DensennError


def main(argv=None) -> int:
    """Run the ``densenn`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:    # argparse: --help/--version (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "func", None) is None:
        print(f"{PROG}: error: missing command; choose one of train, evaluate, predict, info, bench, export "
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


#: ``main``, and the names of the former single-module ``densenn.cli`` (its helpers included)
__all__ = ["main", "build_parser", "collect_info", "run_bench", "cmd_train", "cmd_evaluate", "cmd_predict",
           "cmd_info", "cmd_bench", "PROG", "CLI_FORMAT", "TRAIN_DEFAULTS", "DEFAULT_LR", "DIGITS_SPLIT",
           "OPTIMIZER_NAMES", "SCHEDULE_NAMES", "NORM_NAMES", "_architecture", "_clean", "_engine", "_guard",
           "_load_dataset", "_oneline", "_print_json", "_say", "_standardizer_from", "_blas_info", "_print_info",
           "_threads_info", "_version", "_bench_size", "_dropout_rate", "_layers", "_nonnegative_float",
           "_nonnegative_int", "_Parser", "_positive_float", "_positive_int", "_as_rows", "_csv_rows",
           "_read_samples", "_write_predictions", "_make_optimizer", "_prepare_out_folder", "_report_stopped",
           "_stopped", "_hidden_layers", "_check_batchnorm_batches"]
