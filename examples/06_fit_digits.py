"""06 — The high-level API: train on scikit-learn's digits to ≥97%, plot, confusion matrix, save/load.

Examples 01–05 assembled layers by hand. ``densenn.Network`` does the same
assembly for you (the seed's promise: "we don't expect our users to assemble all
these layers by hand"): ``Network(n_in, [Dense(...), ...])`` creates the
inference layers, ``fit`` builds the training network for the batch size
(DenseTraining layers sharing the weights, the cost, the optimizer's state),
gathers each shuffled batch on the engine, and runs forward, cost, backward and
the update without allocating.

Data: ``sklearn.datasets.load_digits`` (1797 8×8 images of digits 0–9, shipped
inside scikit-learn, no download), split 75/25 stratified, standardised with the
training set's mean and standard deviation.

Writes ``digits.png`` (training curves) and ``digits.dn`` (the model, a
safetensors file, with the standardiser stored beside the weights) into
``--out`` (default: a new temporary folder).

Run:  python examples/06_fit_digits.py [--engine cpu] [--epochs 20] [--hidden 128] [--out FOLDER]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import densenn as dn
from densenn.io import load_extra
from densenn.nn.metrics import format_confusion_matrix


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cpu", help="engine name: cpu, cpu:numpy, opencl, cuda (default cpu)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--size", "--hidden", dest="hidden", type=int, default=128,
                        help="units in the hidden ReLU layer (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    parser.add_argument("--out", default=None, help="folder for digits.png and digits.dn (default: a new temp folder)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.hidden < 1 or args.batch_size < 1:
        parser.error("--epochs, --size/--hidden and --batch-size must be positive")
    try:
        engine = dn.get_engine(args.engine)
    except dn.DensennException as exc:
        sys.exit(f"engine {args.engine!r} is not available here: {exc}")
    out = args.out or tempfile.mkdtemp(prefix="densenn-digits-")
    os.makedirs(out, exist_ok=True)

    # -- data ----------------------------------------------------------------------------
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    # Standardise with the TRAINING statistics only; some border pixels are always 0,
    # hence the floor on the standard deviation.
    mean = x_train.mean(axis=0)
    std = np.maximum(x_train.std(axis=0), 1e-6)
    x_train = ((x_train - mean) / std).astype(np.float32)
    x_test = ((x_test - mean) / std).astype(np.float32)
    print(f"digits: {len(x_train)} training, {len(x_test)} test samples of {x_train.shape[1]} pixels, 10 classes")

    # -- the network -----------------------------------------------------------------------
    # Dense(units, activation): He initialisation for ReLU, Glorot otherwise. The softmax
    # output pairs with cross-entropy (the default cost), so the last delta is (a − y)/n.
    net = dn.Network(64, [dn.Dense(args.hidden, "relu"), dn.Dense(10, "softmax")],
                     engine=engine, dtype="float32", seed=0)
    print(net)
    print(net.summary())

    # -- training ----------------------------------------------------------------------------
    # y can be class indices: fit turns them into one-hot targets on the engine.
    start = time.perf_counter()
    history = net.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer=dn.Adam(1e-3), validation_data=(x_test, y_test), progress=False)
    seconds = time.perf_counter() - start
    print(f"\n{'epoch':>5} {'loss':>8} {'acc':>7} {'val_loss':>9} {'val_acc':>8}")
    for i in range(history.epochs):
        print(f"{i + 1:>5} {history['loss'][i]:>8.4f} {history['accuracy'][i]:>7.2%} "
              f"{history['val_loss'][i]:>9.4f} {history['val_accuracy'][i]:>8.2%}")
    print(f"trained {history.epochs} epochs in {seconds:.2f} s")
    mem = net.nbytes()
    print("memory the network owns on the engine (bytes):", {k: v for k, v in mem.items() if v})

    # -- evaluation ----------------------------------------------------------------------------
    scores = net.evaluate(x_test, y_test)
    print(f"\ntest loss {scores['loss']:.4f}, test accuracy {scores['accuracy']:.4f} "
          f"({'reached' if scores['accuracy'] >= 0.97 else 'BELOW'} the 97% target)")
    print("confusion matrix on the test set (rows: true digit, columns: predicted):")
    print(format_confusion_matrix(net.confusion_matrix(x_test, y_test)))
    png = history.plot(os.path.join(out, "digits.png"), title="digits")
    print(f"training curves: {png}")

    # -- save and load ---------------------------------------------------------------------------
    # One file: architecture + weights + whatever JSON we add (here the standardiser, so
    # that whoever loads the model can prepare new images the same way).
    path = net.save(os.path.join(out, "digits.dn"), extra={"mean": mean.tolist(), "std": std.tolist()})
    loaded = dn.load(path, engine=engine)
    extra = load_extra(path)
    same = np.array_equal(loaded.predict(x_test), net.predict(x_test))
    print(f"saved {path} ({os.path.getsize(path)} bytes); loaded back: {loaded}")
    print(f"the loaded network predicts exactly the same outputs: {same}; "
          f"standardiser restored: {np.allclose(extra['mean'], mean) and np.allclose(extra['std'], std)}")
    raw = digits.data[:5]                                    # five raw images, as a user would have them
    prepared = (raw - np.array(extra["mean"])) / np.array(extra["std"])
    print(f"first five digits {digits.target[:5].tolist()}, loaded model predicts "
          f"{loaded.predict_classes(prepared).tolist()}")
    loaded.release()
    net.release()
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
