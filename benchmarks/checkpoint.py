#!/usr/bin/env python
"""What a checkpoint costs: ms per write, and its share of an MNIST epoch.

    python benchmarks/checkpoint.py                  # MNIST 784-256-128-10, Adam, batch 128
    python benchmarks/checkpoint.py --epochs 5 --json out.json

A densenn checkpoint (densenn.training.checkpoint) holds the weights, Adam's two moments,
the run's state and the callbacks' (here EarlyStopping's best weights), with a SHA-256
over all of it, written to a temporary file, fsync'ed and renamed. Timed: each write
during a fit with ``checkpoint_every=50``, and fits of several epochs with a checkpoint at
each epoch's end against fits without, interleaved (the data's fingerprint, taken once per
fit, is timed on its own too). Beside it, PyTorch's usual checkpoint of the same
network (``torch.save`` of the model's and the Adam optimizer's state_dicts), written the
same durable way (temporary file, fsync, rename), when PyTorch is installed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import common
import numpy as np
from common import table
from peers import log, try_torch

import densenn as dn
from densenn.training import checkpoint as ckpt

LAYERS = [dn.Dense(256, "relu"), dn.Dense(128, "relu"), dn.Dense(10, "softmax")]


def data(log_):
    mnist, skipped = common.load_mnist_or_skip(log_)
    if mnist is None:
        log_("using random data of MNIST's shape instead (the timings do not depend on the values)")
        rng = np.random.default_rng(0)
        return rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000), "random 60000×784"
    return mnist.x_train, mnist.y_train, "MNIST"


def timed_writes(net, x, y, folder: str, every: int) -> list[float]:
    """Seconds of each checkpoint write during one epoch that checkpoints every ``every`` steps."""
    times: list[float] = []
    write = ckpt.write

    def timed(path, run):
        t0 = time.perf_counter()
        out = write(path, run)
        times.append(time.perf_counter() - t0)
        return out

    ckpt.write = timed
    try:
        net.fit(x, y, epochs=1, batch_size=128, progress=False, checkpoint=os.path.join(folder, "w.ckpt"),
                checkpoint_every=every, callbacks=[dn.EarlyStopping(monitor="loss")])
    finally:
        ckpt.write = write
    return times


def torch_write_ms(torch, folder: str, repeats: int) -> float:
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model(torch.randn(128, 784)).sum().backward()
    opt.step()              # so the optimizer has its moments, as after training
    path = os.path.join(folder, "t.pt")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs of each timed fit (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="fits timed with and without checkpoints (default 2)")
    p.add_argument("--every", type=int, default=50, help="steps between the timed writes (default 50)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: usable CPUs)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    threads = args.threads or common._cpu_info().get("usable_cpus") or 1
    ctl = common.limit_threads(threads)
    log(common.describe_machine(common.machine(threads)))
    x, y, what = data(log)
    log(f"\n== checkpoint cost: {what}, 784-256-128-10 relu/softmax, Adam, batch 128, float32, cpu engine ==")
    with tempfile.TemporaryDirectory() as folder:
        plain = dn.Network(784, LAYERS, seed=0)
        saving = dn.Network(784, LAYERS, seed=0)
        plain.fit(x[:2048], y[:2048], epochs=1, batch_size=128, progress=False)     # compiles the kernels
        writes = timed_writes(saving, x, y, folder, args.every)
        size = os.path.getsize(os.path.join(folder, "w.ckpt"))
        path = os.path.join(folder, "e.ckpt")
        # whole fits of --epochs epochs, so the data's fingerprint (once per fit) is spread as in use
        seconds: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.rounds):
            for name, net, kw in (("without", plain, {}), ("with", saving, {"checkpoint": path})):
                common.settle()
                t0 = time.perf_counter()
                net.fit(x, y, epochs=args.epochs, batch_size=128, progress=False, **kw)
                seconds[name].append((time.perf_counter() - t0) / args.epochs)
        t0 = time.perf_counter()
        ckpt.fingerprint(x, np.eye(10, dtype=np.float32)[y], None)
        fingerprint_ms = 1e3 * (time.perf_counter() - t0)
        write_ms = 1e3 * statistics.median(writes)
        epoch_without, epoch_with = statistics.median(seconds["without"]), statistics.median(seconds["with"])
        rows = [["densenn", f"{size / 1e6:.2f}", f"{write_ms:.1f}", f"{epoch_without:.3f}", f"{epoch_with:.3f}",
                 f"{100 * write_ms / 1e3 / epoch_without:.2f}%", f"{epoch_with / epoch_without:.3f}"]]
        out = {"data": what, "write_ms": write_ms, "writes": len(writes), "file_mb": size / 1e6,
               "fingerprint_ms_per_fit": fingerprint_ms,
               "epoch_s_without": epoch_without, "epoch_s_with": epoch_with, "seconds": seconds}
        torch, why = try_torch()
        if torch is not None:
            torch.set_num_threads(threads)
            tms = torch_write_ms(torch, folder, max(5, len(writes)))
            rows.append(["PyTorch torch.save", f"{os.path.getsize(os.path.join(folder, 't.pt')) / 1e6:.2f}",
                         f"{tms:.1f}", "", "", f"{100 * tms / 1e3 / epoch_without:.2f}% (of densenn's epoch)", ""])
            out["torch_write_ms"] = tms
            rows.append(["densenn / PyTorch", "", f"{write_ms / tms:.2f}", "", "", "", ""])
        else:
            log(why)
    log(table(["", "file MB", "ms per write", "epoch s without", "epoch s with", "write / epoch",
               "with / without"], rows))
    log(f"(median of {len(writes)} writes; epochs: median of {args.rounds} fits of {args.epochs} epochs each, "
        f"interleaved; the data's fingerprint, once per fit with a checkpoint: {fingerprint_ms:.1f} ms)")
    if args.json:
        common.write_json(args.json, {"machine": common.machine(threads), "checkpoint": out})
    del ctl
    return 0


if __name__ == "__main__":
    sys.exit(main())
