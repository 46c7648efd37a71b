"""``densenn evaluate``: loss, accuracy and confusion matrix of a saved model on its test split."""
from __future__ import annotations

import os
import time

from densenn.cli.common import TRAIN_DEFAULTS, _architecture, _engine, _load_dataset, _print_json, _standardizer_from
from densenn.errors import DensennError


def cmd_evaluate(args) -> int:
    from densenn.io import load, load_extra
    from densenn.nn.metrics import format_confusion_matrix

    extra = load_extra(args.model)           # DensennError for a missing or broken file
    net = load(args.model, engine=_engine(args.engine))
    cli = extra.get("cli")
    block: dict = cli if isinstance(cli, dict) else {}
    data_block = block.get("data")
    saved: dict = data_block if isinstance(data_block, dict) else {}
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
