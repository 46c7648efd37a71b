"""``densenn predict``: class indices (or probabilities) for each row of a .npy/.csv file."""
from __future__ import annotations

import os

import numpy as np

from densenn.cli.common import _engine, _oneline, _print_json, _standardizer_from
from densenn.errors import DensennError, is_real_number_dtype
from densenn.files import atomic_write, check_writable_folder


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
