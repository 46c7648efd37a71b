#!/usr/bin/env python
"""What per-sample weights cost a training epoch (issue 14's target: at most 1.05×).

    python benchmarks/sample_weight.py                     # CPU engine, 5 rounds of one epoch each
    python benchmarks/sample_weight.py --quick             # 3 rounds on 16384 samples
    python benchmarks/sample_weight.py --engine opencl --json benchmarks/results/sample_weight.json

MNIST's network 784-256-128-10 (ReLU/softmax, cross-entropy, Adam 1e-3, batch 128, float32),
on MNIST's training set (``common.MNIST_DIR``; synthetic data of MNIST's shape where it is
absent). Each round trains one network two epochs: one unweighted, one with a weight per
sample (random, or all 1). Each epoch is the fit loop (shuffle, gather, step for every
batch, one read of the accumulated loss at the end), run on the ``TrainingNetwork``
directly: it is what ``fit(..., sample_weight=w)`` runs; then the same through ``fit`` itself.

One network for both, so that both read the same memory: two networks of one seed, side
by side, differed by up to 6% in either direction here from where their buffers lay, more
than the weighted path costs (a gather of 128 weights and their sum on the host, a multiply
per row in the output kernel). Interleaved finely: the two epochs of a round run in
alternating chunks of ``--chunk`` steps (which goes first alternates too), each chunk timed,
so that a burst of load on a shared machine falls on both; an epoch's time is the sum of its
chunks. Prints the median epoch of each, the median of the rounds' ratios and that of
neighbouring chunks' ratios, and the machine.
"""
from __future__ import annotations

import argparse
import gc
import math
import statistics
import time

import common
import numpy as np
from common import table

import densenn as dn
from densenn.nn.targets import index_dtype, prepare_targets

SIZES = [784, 256, 128, 10]
ACTS = ["relu", "relu", "softmax"]
BATCH, LR = 128, 1e-3
TARGET = 1.05


def data(quick: bool, log):
    """(x, labels, what): MNIST's training set, else random data of its shape."""
    mnist, skipped = common.load_mnist_or_skip(log)
    if skipped is None:
        x, y, what = mnist.x_train, np.asarray(mnist.y_train), "MNIST's training set"
    else:
        rng = np.random.default_rng(0)
        x, y = rng.uniform(0, 1, (60000, 784)).astype(np.float32), rng.integers(0, 10, 60000)
        what = "synthetic data of MNIST's shape"
    if quick:
        x, y = x[:16384], y[:16384]
    return np.ascontiguousarray(x, np.float32), y, f"{what}, {len(x)} samples"


class Model:
    """The network, its trainer and optimizer, and the data on the engine."""

    def __init__(self, engine, x, y):
        self.net = dn.Network(SIZES[0], [dn.Dense(u, a) for u, a in zip(SIZES[1:], ACTS)], engine=engine,
                              dtype="float32", seed=0)
        e = self.e = self.net.engine
        targets, labels = prepare_targets(y, len(x), SIZES[-1])
        self.tn = self.net.trainer(BATCH, "crossentropy")
        self.opt = dn.Adam(LR)
        self.opt.bind(e, self.tn.params, self.net.dtype)
        self.xs, self.ys = e.to_engine(x), e.to_engine(targets.astype(np.float32))
        self.ls = e.to_engine(labels.astype(index_dtype(e)))


class Run:
    """The fit loop of one kind of epoch (unweighted: ``w`` None) on the shared ``model``."""

    def __init__(self, model, w, seed):
        self.e, self.tn, self.opt = model.e, model.tn, model.opt
        self.xs, self.ys, self.ls = model.xs, model.ys, model.ls
        self.ws = None if w is None else self.tn.sample_weights(w)
        self.n, self.rng, self.losses = len(model.xs), np.random.default_rng([seed, 1]), []
        # the two epochs of a round interleave on one trainer: each accumulates into its own
        # acc, swapped in for its chunks (the trainer reads tn.acc at every step)
        self.acc = self.e.zeros((2,), model.net.dtype)

    def begin(self):
        """Start an epoch: a new shuffle, acc zeroed."""
        self.order = self.rng.permutation(self.n).astype(index_dtype(self.e))
        self.steps = math.ceil(self.n / BATCH)
        self.tn.acc = self.acc
        self.tn.read_acc(reset=True)

    def run(self, first: int, last: int):
        """Steps first..last-1 of the epoch."""
        tn, order = self.tn, self.order
        tn.acc = self.acc
        for step in range(first, min(last, self.steps)):
            rows = tn.load(self.xs, self.ys, self.ls, order[step * BATCH:(step + 1) * BATCH], self.ws)
            tn.step(rows, self.opt, step / self.steps, True)

    def end(self):
        self.tn.acc = self.acc
        loss_sum, _ = self.tn.read_acc(reset=True)      # the one read back of an epoch, as fit's
        self.losses.append(loss_sum / (self.n if self.ws is None else self.ws.total))


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def fit_rounds(net, x, y, w, rounds: int, log) -> float:
    """The same comparison through ``Network.fit`` itself (an epoch per call, the data uploaded
    by each call, both variants on one network, which goes first alternating): the median of
    the rounds' ratios."""
    ratios, seconds = [], {"unweighted": [], "sample_weight": []}
    for r in range(rounds):
        gc.collect()
        common.settle()
        took = {}
        for name in (("unweighted", "sample_weight") if r % 2 == 0 else ("sample_weight", "unweighted")):
            took[name] = timed(lambda: net.fit(x, y, epochs=1, batch_size=BATCH, progress=False,
                                               sample_weight=None if name == "unweighted" else w))
            seconds[name].append(took[name])
        ratios.append(took["sample_weight"] / took["unweighted"])
    ratio = statistics.median(ratios)
    log(f"through Network.fit (1 epoch per call, {rounds} rounds): unweighted "
        f"{statistics.median(seconds['unweighted']):.3f} s, sample_weight "
        f"{statistics.median(seconds['sample_weight']):.3f} s: {ratio:.3f}× (median of the rounds' ratios)")
    return ratio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--engine", default="cpu")
    ap.add_argument("--rounds", type=int, default=None, help="epochs timed per variant (default 5, --quick 3)")
    ap.add_argument("--quick", action="store_true", help="16384 samples, 3 rounds")
    ap.add_argument("--chunk", type=int, default=16, help="steps per timed chunk (default 16)")
    ap.add_argument("--threads", type=int, default=None, help="pin BLAS, Numba and densenn to this many threads")
    ap.add_argument("--weights", choices=("random", "ones"), default="random",
                    help="uniform in [0, 2) (default), or all 1: then both train bit for bit alike, and what "
                         "differs is the weighted path alone")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    log = print
    _ctl = common.limit_threads(args.threads) if args.threads else None   # the limits hold while it lives
    m = common.machine(args.threads)
    log(common.describe_machine(m))
    x, y, what = data(args.quick, log)
    w = np.random.default_rng(2).uniform(0.0, 2.0, len(x)) if args.weights == "random" else np.ones(len(x))
    model = Model(args.engine, x, y)
    runs = {"unweighted": Run(model, None, 0), "sample_weight": Run(model, w, 1)}
    log(f"\n== {'-'.join(map(str, SIZES))} ReLU/softmax, cross-entropy, Adam {LR}, batch {BATCH}, "
        f"engine {runs['unweighted'].e!r}: {what}; weights {args.weights}; {rounds} rounds after a warm-up "
        "epoch ==")
    for run in runs.values():                          # a warm-up epoch: compiles the kernels, fills caches
        run.begin()
        run.run(0, run.steps)
        run.end()
    seconds: dict = {k: [] for k in runs}
    chunk_ratios = []
    names = list(runs)
    for r in range(rounds):
        gc.collect()
        common.settle()
        spent = dict.fromkeys(names, 0.0)
        for run in runs.values():
            run.begin()
        steps = runs[names[0]].steps
        for k, first in enumerate(range(0, steps, args.chunk)):
            took = {}
            for name in (names if (r + k) % 2 == 0 else names[::-1]):
                took[name] = timed(runs[name].run, first, first + args.chunk) + timed(runs[name].e.synchronize)
                spent[name] += took[name]
            chunk_ratios.append(took["sample_weight"] / took["unweighted"])
        for name in names:
            spent[name] += timed(runs[name].end)
            seconds[name].append(spent[name])
    med = {k: statistics.median(v) for k, v in seconds.items()}
    # paired: each round's two epochs ran side by side, through the same bursts of load
    ratio = statistics.median([b / a for a, b in zip(seconds["unweighted"], seconds["sample_weight"])])
    chunk_ratio = statistics.median(chunk_ratios)
    rows = [[k, f"{med[k]:.3f}", f"{min(v):.3f}", " ".join(f"{s:.3f}" for s in v), f"{runs[k].losses[-1]:.4f}"]
            for k, v in seconds.items()]
    log(table(["epoch", "median s", "min s", "every round s", "last loss"], rows))
    log(f"\nsample_weight / unweighted epoch: {ratio:.3f}× (median of the rounds' ratios), {chunk_ratio:.3f}× "
        f"(median of {len(chunk_ratios)} neighbouring chunks of {args.chunk} steps)")
    ratio = max(ratio, chunk_ratio)
    verdict = "within" if ratio <= TARGET else "OVER"
    log(f"the larger: {ratio:.3f}×, {verdict} the {TARGET}× target")
    fit_ratio = fit_rounds(model.net, x, y, w, rounds, log)
    if args.json:
        log("wrote " + common.write_json(args.json, {"machine": m, "data": what, "engine": args.engine,
                                                      "fit_ratio": fit_ratio,
                                                      "weights": args.weights, "rounds": rounds,
                                                      "chunk": args.chunk, "seconds": seconds,
                                                      "median_s": med, "chunk_ratios": chunk_ratios,
                                                      "ratio": ratio, "target": TARGET}))
    model.net.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
