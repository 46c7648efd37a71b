#!/usr/bin/env python
"""What Dropout, BatchNorm and LayerNorm cost on top of a Dense layer, per training step.

    python benchmarks/layer_overhead.py                 # CPU, Dense 1024×1024 at batch 128
    python benchmarks/layer_overhead.py --engine opencl --units 512 --batch 256

Times, interleaved, one training step's work of each layer of the network
1024 → Dense(1024, "linear") → layer → Dense(10) (float32): the Dense layer's forward
and backward (GEMMs, bias, delta, ∇b, ∇w, the signal) against each layer's forward and
backward (and, for BatchNorm, its running-statistics update). The target (issue "Layers"):
each at most 10% of the Dense layer's step. PyTorch's ``nn.Dropout`` / ``nn.BatchNorm1d``
/ ``nn.LayerNorm`` forward+backward on the same shapes, against its ``nn.Linear``'s, are
printed beside it when PyTorch is installed, with flushed subnormals and the same threads.
"""
from __future__ import annotations

import argparse
import sys

import common
import numpy as np
from common import table
from peers import log, try_torch

import densenn as dn

CASES = {
    "Dropout(0.2)": lambda: dn.Dropout(0.2),
    "BatchNorm": lambda: dn.BatchNorm(),
    "LayerNorm": lambda: dn.LayerNorm(),
}


def densenn_steps(engine, units: int, batch: int, case: str) -> dict:
    """{"dense": fn, "layer": fn}: one forward+backward of the Dense layer, of the layer after it."""
    net = dn.Network(units, [dn.Dense(units, "linear"), CASES[case](), dn.Dense(10, "softmax")], engine=engine,
                     seed=0)
    tn = net.trainer(batch, "crossentropy")
    e = net.engine
    e.upload(np.random.default_rng(0).normal(size=(batch, units)).astype(np.float32), tn.x)
    dense, layer, out = tn.layers
    for lay in tn.layers:
        lay.forward()

    def dense_step():
        dense.forward()
        dense.backward(dense.a, propagate=True)

    def layer_step():
        layer.forward()
        layer.backward(out.x, propagate=True)
        if hasattr(layer, "advance"):
            layer.advance()

    return {"dense": dense_step, "layer": layer_step}, e.synchronize


def torch_steps(torch, units: int, batch: int, case: str):
    lin = torch.nn.Linear(units, units)
    mod = {"Dropout(0.2)": lambda: torch.nn.Dropout(0.2), "BatchNorm": lambda: torch.nn.BatchNorm1d(units),
           "LayerNorm": lambda: torch.nn.LayerNorm(units)}[case]()
    x = torch.randn(batch, units, requires_grad=True)
    h = torch.randn(batch, units, requires_grad=True)
    g = torch.randn(batch, units)

    def dense_step():
        lin.zero_grad(set_to_none=True)
        lin(x).backward(g)

    def layer_step():
        mod.zero_grad(set_to_none=True)
        mod(h).backward(g)

    return {"dense": dense_step, "layer": layer_step}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="cpu")
    p.add_argument("--units", type=int, default=1024)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: usable CPUs)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    threads = args.threads or common._cpu_info().get("usable_cpus") or 1
    ctl = common.limit_threads(threads)
    torch, why = try_torch()
    if torch is not None:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
    log(common.describe_machine(common.machine(threads)))
    log(f"\n== per-step cost of a layer after Dense {args.units}×{args.units}, batch {args.batch}, float32, "
        f"engine {args.engine}; forward + backward, median of {args.repeats} ==")
    rows, out = [], {"units": args.units, "batch": args.batch, "engine": args.engine, "cases": {}}
    for case in CASES:
        fns, sync = densenn_steps(args.engine, args.units, args.batch, case)
        named = {f"densenn {k}": f for k, f in fns.items()}
        if torch is not None:
            named.update({f"PyTorch {k}": f for k, f in torch_steps(torch, args.units, args.batch, case).items()})
        t = common.interleaved(named, repeats=args.repeats, sync=sync)
        share = t["densenn layer"].median / t["densenn dense"].median
        row = [case, f"{t['densenn dense'].ms:.3f}", f"{t['densenn layer'].ms:.3f}", f"{100 * share:.1f}%",
               "PASS" if share <= 0.10 else "MISS"]
        res = {"densenn_dense_ms": t["densenn dense"].ms, "densenn_layer_ms": t["densenn layer"].ms,
               "densenn_share": share}
        if torch is not None:
            tshare = t["PyTorch layer"].median / t["PyTorch dense"].median
            row += [f"{t['PyTorch dense'].ms:.3f}", f"{t['PyTorch layer'].ms:.3f}", f"{100 * tshare:.1f}%"]
            res.update({"torch_dense_ms": t["PyTorch dense"].ms, "torch_layer_ms": t["PyTorch layer"].ms,
                        "torch_share": tshare})
        rows.append(row)
        out["cases"][case] = res
    hdr = ["layer", "densenn Dense ms", "densenn layer ms", "layer/Dense", "≤ 10%"]
    if torch is not None:
        hdr += ["PyTorch Linear ms", "PyTorch layer ms", "layer/Linear"]
    else:
        log(why)
    log(table(hdr, rows))
    if args.json:
        common.write_json(args.json, {"machine": common.machine(threads), **out})
    del ctl
    return 0


if __name__ == "__main__":
    sys.exit(main())
