#!/usr/bin/env python
"""densenn against its peers on the CPU: the one benchmark entry point.

    python benchmarks/run.py                  # everything (~10 min on 2 cores)
    python benchmarks/run.py --quick          # a smoke run: few epochs and repeats, seed at N=2000
    python benchmarks/run.py --only mlp,seed  # some sections: mlp, seed, mnist, layers, scaling, memory

Peers: PyTorch (CPU), scikit-learn's MLPClassifier, and JAX (a jit-compiled step) when
``import jax`` works. All get the same threads (``--threads``, default all usable CPUs),
the same architecture, the same initial weights (densenn's, copied), the same batches.
Every comparison is checked for correctness before it is timed, and timed interleaved
(one sample of each library per round) so a noisy machine hurts all alike. See
docs/benchmarks.md for what each row means.

This file is the driver (options, the sections in turn, the summary); each section is a
module of its own: ``bench_mlp``, ``bench_seed``, ``bench_mnist``, ``bench_scaling``,
``bench_layers`` (MNIST with BatchNorm and Dropout), ``bench_memory``, with the peers in ``peers``.

Writes ``benchmarks/results/run.json`` (machine description + every number) and
``benchmarks/results/scaling.png``. Exit status 1 if a correctness check failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import bench_layers
import bench_memory
import bench_mlp
import bench_mnist
import bench_scaling
import bench_seed
import common
from common import fmt, ratio, table
from peers import log

SECTIONS = ("mlp", "seed", "mnist", "layers", "scaling", "memory")
#: each section: run(args, res) -> its part of run.json
SECTION_FUNCTIONS = {"mlp": bench_mlp.section_mlp, "seed": bench_seed.section_seed,
                     "mnist": bench_mnist.section_mnist, "layers": bench_layers.section_layers,
                     "scaling": bench_scaling.section_scaling,
                     "memory": bench_memory.section_memory}
TARGETS = {  # PERFORMANCE.md, CPU: densenn / PyTorch in the same run
    "mlp_step": 0.85,
    "seed_step": 1.0,
    "mnist_epoch": 0.5,
    "mnist_acc_points": 0.3,
    # issue "Layers": MNIST 784-512-512-10 with BatchNorm and Dropout 0.2, 10 epochs
    "layers_epoch": 0.6,
    "layers_accuracy": 98.4,
    "layers_acc_points": 0.2,
}

# -- summary ----------------------------------------------------------------------------------------
def verdict(value, limit, lower_is_better=True):
    if value is None:
        return "—"
    return "PASS" if (value <= limit if lower_is_better else value >= limit) else "MISS"


def summary(res, args):
    rows = []
    hdr = ["benchmark", "unit", "densenn", "PyTorch", "densenn/PyTorch", "scikit-learn", "densenn/sklearn", "JAX",
           "GEMM floor", "target", "status"]

    def med(d, k):
        return d[k].median * 1e3 if d and k in d else None

    if "mlp" in res and "step" in res["mlp"]:
        m = res["mlp"]
        for kind, label, tkey in (("step", "MLP 784-1024-1024-10 b128: SGD step (gather+fwd+bwd+update)", "mlp_step"),
                                  ("forward", "MLP 784-1024-1024-10 b128: forward only", None)):
            d = m[kind]
            dv, tv, sv, jv, fv = (med(d, k) for k in ("densenn", "PyTorch", "scikit-learn", "JAX", "GEMM floor"))
            r = ratio(dv, tv)
            rows.append((label, "ms", fmt(dv), fmt(tv), fmt(r), fmt(sv), fmt(ratio(dv, sv)), fmt(jv), fmt(fv),
                         f"≤ {TARGETS[tkey]}× PyTorch" if tkey else "", verdict(r, TARGETS[tkey]) if tkey else "info"))
    if "seed" in res and "step" in res["seed"]:
        s = res["seed"]
        n = s["size"]
        for kind, label, tkey in (("forward", f"seed x {n}²: forward", None),
                                  ("step", f"seed x {n}²: full step (fwd+bwd, no update)", "seed_step")):
            d = s[kind]
            dv, tv, jv, fv = (med(d, k) for k in ("densenn", "PyTorch", "JAX", "GEMM floor"))
            r = ratio(dv, tv)
            rows.append((label, "ms", fmt(dv), fmt(tv), fmt(r), "", "", fmt(jv), fmt(fv),
                         f"≤ {TARGETS[tkey]}× PyTorch" if tkey else "", verdict(r, TARGETS[tkey]) if tkey else "info"))
    if "mnist" in res and "per_epoch" in res["mnist"] and res["mnist"]["per_epoch"]:
        p = res["mnist"]["per_epoch"]
        g = lambda lib, k: p.get(lib, {}).get(k)  # noqa: E731
        ep = res["mnist"]["epochs"]
        dv, tv, sv, jv = (g(k, "median_s_per_epoch") for k in ("densenn", "PyTorch", "scikit-learn", "JAX"))
        r = ratio(dv, tv)
        rows.append((f"MNIST 784-256-128-10 Adam b128: time per epoch (median of {ep})", "s", fmt(dv), fmt(tv), fmt(r),
                     fmt(sv), fmt(ratio(dv, sv)), fmt(jv), "", f"≤ {TARGETS['mnist_epoch']}× PyTorch",
                     verdict(r, TARGETS["mnist_epoch"])))
        da, ta, sa, ja = (g(k, "final_accuracy") for k in ("densenn", "PyTorch", "scikit-learn", "JAX"))
        pct = lambda v: None if v is None else 100 * v  # noqa: E731
        diff = None if da is None or ta is None else 100 * (da - ta)
        rows.append((f"MNIST: test accuracy after {ep} epochs", "%", fmt(pct(da)), fmt(pct(ta)),
                     "" if diff is None else f"{diff:+.2f} pts", fmt(pct(sa)), "", fmt(pct(ja)), "",
                     f"≥ PyTorch − {TARGETS['mnist_acc_points']} pts" + ("" if ep >= 20 else f" (at 20 epochs; ran {ep})"),
                     verdict(diff, -TARGETS["mnist_acc_points"], lower_is_better=False) if ep >= 20 else "info"))
        s98 = [g(k, "seconds_to_98") for k in ("densenn", "PyTorch", "scikit-learn", "JAX")]
        e98 = [g(k, "epoch_to_98") for k in ("densenn", "PyTorch", "scikit-learn", "JAX")]
        cell = lambda s_, e_: "not reached" if s_ is None else f"{s_:.1f} (ep {e_})"  # noqa: E731
        rows.append(("MNIST: time to 98% test accuracy (training time)", "s",
                     *[cell(s_, e_) if lib in p else "—" for s_, e_, lib in
                       zip(s98[:2], e98[:2], ("densenn", "PyTorch"))],
                     fmt(ratio(s98[0], s98[1])),
                     cell(s98[2], e98[2]) if "scikit-learn" in p else "—", "",
                     cell(s98[3], e98[3]) if "JAX" in p else "—", "", "", "info"))
    if "layers" in res and res["layers"].get("per_epoch"):
        p = res["layers"]["per_epoch"]
        ep = res["layers"]["epochs"]
        dv, tv = (p.get(k, {}).get("median_s_per_epoch") for k in ("densenn", "PyTorch"))
        r = ratio(dv, tv)
        rows.append((f"MNIST 784-512-512-10 BatchNorm+Dropout Adam b128: time per epoch (median of {ep})", "s",
                     fmt(dv), fmt(tv), fmt(r), "", "", "", "", f"≤ {TARGETS['layers_epoch']}× PyTorch",
                     verdict(r, TARGETS["layers_epoch"])))
        da, ta = (p.get(k, {}).get("final_accuracy") for k in ("densenn", "PyTorch"))
        diff = None if da is None or ta is None else 100 * (da - ta)
        ok = None if da is None else (100 * da >= TARGETS["layers_accuracy"] and
                                      (diff is None or diff >= -TARGETS["layers_acc_points"]))
        rows.append((f"MNIST BatchNorm+Dropout: test accuracy after {ep} epochs", "%",
                     fmt(None if da is None else 100 * da), fmt(None if ta is None else 100 * ta),
                     "" if diff is None else f"{diff:+.2f} pts", "", "", "", "",
                     f"≥ {TARGETS['layers_accuracy']}% and ≥ PyTorch − {TARGETS['layers_acc_points']} pts"
                     + ("" if ep >= 10 else f" (at 10 epochs; ran {ep})"),
                     ("PASS" if ok else "MISS") if ep >= 10 and ok is not None else "info"))
    if "memory" in res:
        mm = res["memory"]
        for case, label in (("mlp", "MLP step: extra RSS peak over weights+data"),
                            ("seed", f"seed step (x {args.seed_size}²): extra RSS peak")):
            d, t = mm.get(f"{case}:densenn", {}), mm.get(f"{case}:torch", {})
            dv = None if d.get("extra_rss_peak") is None else d["extra_rss_peak"] / 2**20
            tv = None if t.get("extra_rss_peak") is None else t["extra_rss_peak"] / 2**20
            rows.append((label, "MiB", fmt(dv), fmt(tv), fmt(ratio(dv, tv)), "", "", "", "", "", "info"))
        d = mm.get("mlp:densenn", {})
        g_ = d.get("steady_bytes_growth_per_step")
        tp = d.get("steady_transient_peak_per_step")
        t = mm.get("mlp:torch", {})
        ok = None if g_ is None else (g_ * 50 < 4096 and tp < 4096)
        rows.append(("MLP step: bytes allocated per steady-state step", "B",
                     "—" if g_ is None else f"peak {tp:.0f}, kept {g_:.0f}",
                     f"{t['steady_bytes_allocated_per_step']} (profiler)" if "steady_bytes_allocated_per_step" in t else "—",
                     "", "", "", "", "", "no arrays: peak < 4 KiB, kept < 4 KiB over 50 steps",
                     "—" if ok is None else ("PASS" if ok else "MISS")))
    return hdr, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 3 repeats, seed at N=2000")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument("--epochs", type=int, default=None, help="MNIST epochs (default 20; --quick 3)")
    p.add_argument("--layer-epochs", type=int, default=None,
                   help="epochs of the BatchNorm+Dropout MNIST section (default 10; --quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per measurement (default 11; --quick 3); rows with a target take 2·repeats-1")
    p.add_argument("--seed-size", type=int, default=None, help="N of the seed benchmark (default 4000; --quick 2000)")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: usable CPUs)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS, help="where run.json and scaling.png go")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = args.threads or common._cpu_info().get("usable_cpus") or 1
    args.epochs = args.epochs or (3 if args.quick else 20)
    args.repeats = args.repeats or (3 if args.quick else 11)
    args.layer_epochs = args.layer_epochs or (2 if args.quick else 10)
    args.seed_size = args.seed_size or (2000 if args.quick else 4000)
    if args.child:
        _, lib, case = args.child.split(":")
        print(json.dumps(bench_memory.memory_child(lib, case, args.seed_size, args.threads),
                         default=common._jsonable))
        return 0
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        p.error(f"--only takes {', '.join(SECTIONS)}; unknown: {', '.join(bad)}")
    _ctl = common.limit_threads(args.threads)
    start = time.perf_counter()
    mach = common.machine(args.threads)
    log(common.describe_machine(mach))
    res = {"machine": mach, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "targets": TARGETS}
    failed = []
    for name in only:
        t0 = time.perf_counter()
        try:
            res[name] = SECTION_FUNCTIONS[name](args, res)
        except Exception as exc:
            traceback.print_exc()
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        res[name]["section_seconds"] = time.perf_counter() - t0
        common.write_json(args.out_dir / "run.json", res)       # keep what we have so far
    hdr, rows = summary(res, args)
    res["summary"] = [dict(zip(hdr, r)) for r in rows]
    res["loadavg_at_end"] = common.loadavg()
    res["total_seconds"] = time.perf_counter() - start
    log(f"\n== summary (threads: {args.threads} for every library; ratios are densenn/peer, lower is faster) ==")
    log(table(hdr, rows, "<<" + ">" * (len(hdr) - 2)))
    log(f"load average at start {mach['loadavg_at_start']}, at end {res['loadavg_at_end']} "
        f"(on a loaded machine, trust ratios more than absolute times)")
    log(f"total {res['total_seconds']:.0f} s; wrote {common.write_json(args.out_dir / 'run.json', res)}")
    checks = [res[k].get("checks_ok", True) for k in ("mlp", "seed") if k in res]
    if failed or not all(checks):
        log(f"FAILED: {'sections ' + ', '.join(failed) if failed else ''} "
            f"{'a correctness check' if not all(checks) else ''}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
