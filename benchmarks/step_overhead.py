#!/usr/bin/env python
"""How much of a densenn training step is not matrix multiplication?

    python benchmarks/step_overhead.py                    # CPU: MLP step and the seed's micro-benchmark
    python benchmarks/step_overhead.py --quick            # fewer repeats, seed at N=2000
    python benchmarks/step_overhead.py --breakdown mlp,mnist --cprofile
    python benchmarks/step_overhead.py --engine opencl --seed-size 1000

For each case this times densenn's step and, in the same run, the *GEMM floor*: the very
same matrix products (shapes and transposes: forward ``z = x·wᵀ``, backward ``∇w = δᵀ·x``
and the signal ``δ·w`` per layer, no signal below the first layer) called alone through
the CPU engine's ``gemm`` (MKL when installed, else SciPy's OpenBLAS: the BLAS the step
itself uses) into preallocated outputs. What the step takes beyond the floor
(gather, bias + activation, derivative, Σ rows, cost, optimizer, Python) is printed as a
share of the step; the performance guide's target is at most 15%.

1. MLP 784-1024-1024-10, ReLU/softmax, cross-entropy, batch 128, float32, plain SGD: one
   training step as ``fit`` runs it: ``TrainingNetwork.load`` (gather a shuffled batch from a
   16384-sample data set) + ``TrainingNetwork.step`` (forward, cost, backward, update).
2. The seed's micro-benchmark scaled to 2 cores: x 4000×4000 (batch 4000 of 4000 features),
   4000→2000 tanh →400 sigmoid →10 sigmoid, one full step as the seed defines it: forward and
   backward (δ, ∇w, ∇b, signal) through the training layers, the signal of the last layer
   being its own output; no cost, no update. The network is ``densenn.seedbench.SeedBench``.

``--breakdown`` (default ``mlp,mnist``) then times every engine call of one step (each GEMM
next to its floor, bias+activation, delta, Σ rows, cost, gather, optimizer) and the Python
between them; ``mnist`` is the MNIST net 784-256-128-10 with Adam. ``--cprofile`` adds
cProfile's view (top functions by own time).
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import sys
import time
from collections import defaultdict
from types import SimpleNamespace

import common
import numpy as np
from common import interleaved, table

import densenn as dn
from densenn import seedbench
from densenn.backend.cpu import CPUEngine

MLP_SIZES = [784, 1024, 1024, 10]
MLP_ACTS = ["relu", "relu", "softmax"]
MNIST_SIZES = [784, 256, 128, 10]
MNIST_ACTS = ["relu", "relu", "softmax"]
OVERHEAD_TARGET = 15.0      # % of the step beyond the GEMM floor (PERFORMANCE.md)


# -- GEMM FLOPs ------------------------------------------------------------------------------------
def step_flops(sizes, batch) -> dict:
    """GEMM FLOPs (2·m·n·k each) of one step: forward, ∇w, and signals (none below the first layer)."""
    per = [2.0 * batch * i * o for i, o in zip(sizes, sizes[1:])]
    return {"forward": sum(per), "dw": sum(per), "signal": sum(per[1:]), "step": 2 * sum(per) + sum(per[1:])}


# -- the GEMM floor --------------------------------------------------------------------------------
def _gemm_call(a, b, c, trans_a=False, trans_b=False):
    """A zero-argument call computing c = op(a)·op(b) in place through the CPU engine's own gemm:
    the BLAS densenn's step uses (MKL when installed, else SciPy's OpenBLAS), so that the
    floor is what the step's products alone cost."""
    gemm = dn.get_engine("cpu").gemm
    call = functools.partial(gemm, 1.0, a, b, 0.0, c, trans_a=trans_a, trans_b=trans_b)
    if call() is not c:
        raise RuntimeError(f"gemm did not write in place into c {c.shape}")
    return call


def gemm_label(kind: str, m: int, n: int, k: int) -> str:
    return {"fwd": "gemm z=x·wᵀ", "dw": "gemm ∇w=δᵀ·x", "sig": "gemm signal δ·w"}[kind] + f" {m}×{n} (k={k})"


def gemm_plan(sizes, batch, dtype=np.float32, seed=0):
    """The step's GEMMs as zero-argument engine calls on random operands, in the step's order.

    Returns [(label, flops, call)]. Signals go into scratch buffers (not the layer inputs), so
    repeating the plan cannot blow the values up.
    """
    rng = np.random.default_rng(seed)
    e = dn.get_engine("cpu")

    def buffer(host):       # in the engine's own (cache-line aligned) memory, as the step's are
        return e.upload(host.astype(dtype), e.empty(host.shape, dtype))

    layers = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers.append(SimpleNamespace(
            x=buffer(rng.standard_normal((batch, n_in), dtype=np.float32)),
            w=buffer(rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)),
            z=buffer(rng.standard_normal((batch, n_out), dtype=np.float32)),
            dw=e.empty((n_out, n_in), dtype), sig=e.empty((batch, n_in), dtype), n_in=n_in, n_out=n_out))
    plan = []
    for L in layers:
        plan.append((gemm_label("fwd", batch, L.n_out, L.n_in), 2.0 * batch * L.n_in * L.n_out,
                     _gemm_call(L.x, L.w, L.z, trans_b=True)))
    for i in range(len(layers) - 1, -1, -1):
        L = layers[i]
        plan.append((gemm_label("dw", L.n_out, L.n_in, batch), 2.0 * batch * L.n_in * L.n_out,
                     _gemm_call(L.z, L.x, L.dw, trans_a=True)))
        if i > 0:
            plan.append((gemm_label("sig", batch, L.n_in, L.n_out), 2.0 * batch * L.n_in * L.n_out,
                         _gemm_call(L.z, L.w, L.sig)))
    return plan


def floor_fn(plan, forward_only=False):
    calls = [c for label, _, c in plan if not forward_only or label.startswith("gemm z=")]

    def run():
        for c in calls:
            c()
    return run


# -- densenn: an MLP trained as fit trains it -----------------------------------------------------
def build_mlp(sizes, acts, batch, optimizer, engine="cpu", n_data=16384, seed=0, cost="crossentropy"):
    """A densenn MLP, its TrainingNetwork, a bound optimizer and a random data set on the engine.

    Returns a namespace with ``step()`` (gather the next shuffled batch + one training step, as
    ``fit`` does), ``load()``, ``train()`` (the step without the gather), ``forward()`` (the
    training layers' forward on the loaded batch), and the arrays.
    """
    net = dn.Network(sizes[0], [dn.Dense(u, a) for u, a in zip(sizes[1:], acts)], engine=engine,
                     dtype="float32", seed=seed)
    e, dt = net.engine, net.dtype
    rng = np.random.default_rng(seed + 1)
    x = rng.random((n_data, sizes[0]), dtype=np.float32)
    labels = rng.integers(0, sizes[-1], n_data)
    y = np.zeros((n_data, sizes[-1]), np.float32)
    y[np.arange(n_data), labels] = 1.0
    tn = net.trainer(batch, cost, gradients=not optimizer.folds_into_gemm)     # as fit makes it
    optimizer.bind(e, tn.params, dt)
    # labels and indices in the integer types the trainer's own buffers use (as fit does)
    lab_dt, idx_dt = np.dtype(tn.labels.dtype), np.dtype(tn.idx.dtype)
    xs, ys, ls = e.to_engine(x, dt), e.to_engine(y, dt), e.to_engine(labels.astype(lab_dt))
    order = rng.permutation(n_data).astype(idx_dt)
    batches = [order[i * batch:(i + 1) * batch] for i in range(n_data // batch)]
    state = {"i": 0}

    def load():
        i = state["i"]
        state["i"] = (i + 1) % len(batches)
        tn.load(xs, ys, ls, batches[i])

    def train():
        tn.step(batch, optimizer, 0.0, True)

    def step():
        load()
        train()

    def forward():
        for layer in tn.layers:
            layer.forward()

    return SimpleNamespace(net=net, tn=tn, opt=optimizer, engine=e, x=x, y=y, labels=labels, batches=batches,
                           load=load, train=train, step=step, forward=forward, sync=e.synchronize)


def check_mlp(m, rows=128) -> float:
    """Relative error of densenn's forward output (softmax) against float64 NumPy on the loaded batch."""
    m.load()
    m.forward()
    idx = m.engine.to_host(m.tn.idx)[:rows]          # the indices the gather used
    h = m.x[idx].astype(np.float64)
    for (w, b), spec in zip(m.net.get_weights(), m.net.specs):
        h = h @ w.astype(np.float64).T + b
        if spec.activation == "relu":
            h = np.maximum(h, 0)
        elif spec.activation == "softmax":
            h = np.exp(h - h.max(axis=1, keepdims=True))
            h /= h.sum(axis=1, keepdims=True)
    return common.rel_err(m.engine.to_host(m.tn.layers[-1].a)[:rows], h[:rows])


# -- the per-operation breakdown ----------------------------------------------------------------------
#: the engine protocol's operations; activations, costs, optimizers and metrics run through
#: map/reduce of their declared operations, labelled by the operation's name
ENGINE_OPS = ("gemm", "add_bias", "sum_rows", "take_rows", "upload", "axpy", "scal", "copy", "fill", "map",
              "reduce")


def _shape(x):
    return "×".join(str(d) for d in getattr(x, "shape", ()))


def _op_label(name, args, kw):
    try:
        if name == "gemm":
            a, c = args[1], args[4]
            ta = kw.get("trans_a", args[5] if len(args) > 5 else False)
            tb = kw.get("trans_b", args[6] if len(args) > 6 else False)
            k = a.shape[0] if ta else a.shape[1]
            kind = "dw" if ta else ("fwd" if tb else "sig")
            return gemm_label(kind, c.shape[0], c.shape[1], k)
        if name in ("map", "reduce"):
            return f"{args[0].name} {_shape(args[1][0])}"
        if name == "take_rows":
            return f"take_rows (gather) {_shape(args[2])}"
        return f"{name} {_shape(args[0])}"
    except Exception:
        return name


class Instrument:
    """Times every engine call (outermost only) and chosen object methods, by label.

    ``engine`` must be a private engine instance: its methods are replaced by timing
    wrappers until ``restore()``.
    """

    def __init__(self):
        self.totals = defaultdict(float)
        self.counts = defaultdict(int)
        self._restore = []
        self._depth = 0

    def wrap(self, obj, name, labeler, nested_ok=False):
        orig = getattr(obj, name)
        clock = time.perf_counter
        totals, counts = self.totals, self.counts

        def wrapper(*args, **kw):
            if self._depth and not nested_ok:
                return orig(*args, **kw)
            if not nested_ok:
                self._depth += 1
            start = clock()
            try:
                return orig(*args, **kw)
            finally:
                key = labeler(args, kw)
                totals[key] += clock() - start
                counts[key] += 1
                if not nested_ok:
                    self._depth -= 1
        had = name in vars(obj)
        setattr(obj, name, wrapper)
        self._restore.append((obj, name, orig if had else None))

    def wrap_engine(self, engine):
        for name in ENGINE_OPS:
            if hasattr(engine, name):
                self.wrap(engine, name, functools.partial(lambda n, a, k: _op_label(n, a, k), name))

    def restore(self):
        for obj, name, orig in reversed(self._restore):
            if orig is None:
                delattr(obj, name)
            else:
                setattr(obj, name, orig)
        self._restore = []

    def reset(self):
        self.totals.clear()
        self.counts.clear()


def _null_wrap_cost() -> float:
    """Seconds one timing wrapper adds to a call (measured on a no-op)."""
    class O:
        def f(self, *a, **k):
            return None
    o = O()
    ins = Instrument()
    ins.wrap(o, "f", lambda a, k: "f")
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        o.f(1, 2, trans_b=True)
    wrapped = (time.perf_counter() - t0) / n
    ins.restore()
    t0 = time.perf_counter()
    for _ in range(n):
        o.f(1, 2, trans_b=True)
    return max(wrapped - (time.perf_counter() - t0) / n, 0.0)


def breakdown(sizes, acts, batch, make_optimizer, steps=50, title="", floor_plan=None, print_fn=print,
              cprofile=False):
    """Per-operation times of one densenn training step (gather + step), averaged over ``steps``.

    Returns a dict {phases, ops, step_ms, ...}; prints two tables.
    """
    engine = CPUEngine()                     # private instance: wrapping it touches nobody else
    m = build_mlp(sizes, acts, batch, make_optimizer(), engine=engine)
    for _ in range(5):
        m.step()
    plain = common.timeit(m.step, repeats=7, warmup=2)
    ins = Instrument()
    ins.wrap_engine(engine)
    # phases: gather, each layer's forward and backward, the optimizer; the rest of step() is the cost
    ins.wrap(m.tn, "load", lambda a, k: "phase: gather (TrainingNetwork.load)", nested_ok=True)
    for i, layer in enumerate(m.tn.layers):
        ins.wrap(layer, "forward", functools.partial(lambda i, a, k: f"phase: layer {i + 1} forward", i),
                 nested_ok=True)
        ins.wrap(layer, "backward", functools.partial(lambda i, a, k: f"phase: layer {i + 1} backward", i),
                 nested_ok=True)
    ins.wrap(m.opt, "step", lambda a, k: "phase: optimizer.step", nested_ok=True)
    ins.wrap(m.tn, "step", lambda a, k: "phase: TrainingNetwork.step (all)", nested_ok=True)
    for _ in range(3):
        m.step()
    ins.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
        m.step()
    total = (time.perf_counter() - t0) / steps
    ins.restore()
    per = {k: v / steps for k, v in ins.totals.items()}
    counts = {k: c // steps for k, c in ins.counts.items()}
    wrap_cost = _null_wrap_cost()
    floors = {}
    if floor_plan is not None:
        t = interleaved({label: call for label, _, call in floor_plan}, repeats=7, warmup=2)
        floors = {label: t[label].median for label in t}

    phases = {k: v for k, v in per.items() if k.startswith("phase: ")}
    ops = {k: v for k, v in per.items() if not k.startswith("phase: ")}
    whole = phases.get("phase: TrainingNetwork.step (all)", 0.0)
    layer_sum = sum(v for k, v in phases.items() if "layer" in k)
    opt_t = phases.get("phase: optimizer.step", 0.0)
    phase_rows = [(k.replace("phase: ", ""), v) for k, v in phases.items() if "(all)" not in k]
    phase_rows.append(("cost, metric, Python in forward_backward", whole - layer_sum - opt_t))
    phase_rows.append(("fit-loop glue outside load/step", total - whole - phases.get("phase: gather (TrainingNetwork.load)", 0)))
    op_sum = sum(ops.values())
    n_calls = sum(counts.get(k, 0) for k in ops)
    print_fn(f"\n-- where a step goes: {title} --")
    print_fn(f"step without instrumentation {plain.ms:.3f} ms; instrumented {total * 1e3:.3f} ms "
             f"({n_calls} engine calls, each wrapper adds ~{wrap_cost * 1e6:.2f} µs)")
    rows = [(name, f"{v * 1e3:.3f}", f"{100 * v / total:.1f}%") for name, v in phase_rows]
    print_fn(table(["phase", "ms", "% of step"], rows))
    rows = []
    for k in sorted(ops, key=lambda k: -ops[k]):
        fl = floors.get(k)
        rows.append((k, counts.get(k, 0), f"{ops[k] * 1e3:.3f}", f"{100 * ops[k] / total:.1f}%",
                     f"{fl * 1e3:.3f}" if fl is not None else "", f"{(ops[k] - fl) * 1e6:+.0f}" if fl is not None else ""))
    rows.append(("Python between engine calls", "", f"{(total - op_sum) * 1e3:.3f}",
                 f"{100 * (total - op_sum) / total:.1f}%", "", ""))
    print_fn(table(["engine call", "calls", "ms", "% of step", "raw sgemm ms", "Δ µs"], rows))
    gemm = sum(v for k, v in ops.items() if k.startswith("gemm"))
    floor_sum = sum(floors.values()) if floors else None
    print_fn(f"GEMM calls {gemm * 1e3:.3f} ms ({100 * gemm / total:.1f}%)"
             + (f", the same GEMMs alone {floor_sum * 1e3:.3f} ms" if floor_sum else "")
             + f"; everything else {(total - gemm) * 1e3:.3f} ms ({100 * (total - gemm) / total:.1f}%)")
    prof_text = None
    if cprofile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(steps):
            m.step()
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
        prof_text = s.getvalue()
        print_fn(f"cProfile over {steps} steps (tottime; cProfile's own overhead inflates Python-heavy rows):")
        lines = prof_text.splitlines()
        start = next((i for i, l in enumerate(lines) if "ncalls" in l), 0)
        print_fn("\n".join(l for l in lines[start:] if l.strip()))
    return {"title": title, "step_ms_plain": plain.ms, "step_ms_instrumented": total * 1e3,
            "phases_ms": {k: v * 1e3 for k, v in phase_rows},
            "ops_ms": {k: v * 1e3 for k, v in ops.items()}, "calls": counts,
            "python_between_calls_ms": (total - op_sum) * 1e3, "wrapper_cost_us": wrap_cost * 1e6,
            "gemm_floor_ms": {k: v * 1e3 for k, v in floors.items()}, "cprofile": prof_text}


# -- the overhead summary --------------------------------------------------------------------------------
def overhead(step_s, floor_s):
    return 100.0 * (step_s - floor_s) / step_s


def run_mlp(repeats, print_fn=print):
    m = build_mlp(MLP_SIZES, MLP_ACTS, 128, dn.SGD(0.01))
    err = check_mlp(m)
    plan = gemm_plan(MLP_SIZES, 128)
    flops = step_flops(MLP_SIZES, 128)
    t = interleaved({"step": m.step, "floor": floor_fn(plan)}, repeats=repeats, warmup=3)
    return summarise("MLP 784-1024-1024-10 ReLU/softmax, batch 128, float32, SGD: gather + training step",
                     t["step"], t["floor"], flops["step"], len(plan), err, print_fn)


def run_seed(n, repeats, print_fn=print, engine="cpu"):
    with seedbench.SeedBench(n, engine, "float32") as s:
        err = s.check()
        plan = gemm_plan(s.sizes, n)
        flops = seedbench.flops(n)
        t = interleaved({"step": s.step, "floor": floor_fn(plan)}, repeats=repeats, warmup=1, number=1)
    return summarise(f"the seed's micro-benchmark x {n}×{n}, {n}→{n // 2} tanh →{n // 10} sigmoid →10 sigmoid: "
                     f"forward + backward (δ, ∇w, ∇b, signal)", t["step"], t["floor"], flops["step"], len(plan),
                     err, print_fn, err_kind="max |Δ| vs float64", tol=1e-3)


def summarise(title, step, floor, flop, n_gemm, err, print_fn, err_kind="rel. err vs float64", tol=1e-4):
    ok = err < tol
    pct = overhead(step.median, floor.median)
    print_fn(f"\n{title}")
    print_fn(f"  check: forward output {err_kind} {err:.1e} ({'ok' if ok else 'WRONG'})")
    print_fn(f"  densenn step          {step.ms:9.3f} ms  (min {step.min * 1e3:.3f})   {flop / step.median / 1e9:6.1f} GFLOP/s")
    print_fn(f"  GEMM floor ({n_gemm} GEMMs)  {floor.ms:9.3f} ms  (min {floor.min * 1e3:.3f})   "
             f"{flop / floor.median / 1e9:6.1f} GFLOP/s  ({flop / 1e9:.3f} GFLOP)")
    print_fn(f"  beyond the GEMMs      {(step.median - floor.median) * 1e3:9.3f} ms = {pct:.1f}% of the step "
             f"(target ≤ {OVERHEAD_TARGET:.0f}%): {'PASS' if pct <= OVERHEAD_TARGET else 'MISS'}")
    return {"title": title, "check_error": err, "check_ok": ok, "step": step, "floor": floor, "gflop": flop / 1e9,
            "overhead_pct": pct, "target_pct": OVERHEAD_TARGET, "pass": pct <= OVERHEAD_TARGET}


def run_engine_seed(engine_name, n, repeats, print_fn=print):
    """The seed's micro-benchmark on another engine next to the CPU, same size."""
    try:
        e = dn.get_engine(engine_name)
    except dn.DensennError as exc:
        print_fn(f"\nengine {engine_name!r} is not available here: {exc}")
        return {"engine": engine_name, "available": False, "reason": str(exc)}
    print_fn(f"\nthe seed's micro-benchmark, x {n}×{n}: {engine_name} ({e!r}) next to cpu")
    out = {"engine": engine_name, "available": True, "size": n}
    rows = []
    for name in ("cpu", engine_name):
        try:
            with seedbench.SeedBench(n, name, "float32") as s:
                err = s.check()
                if not err < s.tolerance():
                    raise RuntimeError(f"forward output differs from float64 NumPy by {err:.1e}: not timed")
                t = interleaved({"forward": s.forward, "step": s.step}, repeats=repeats, warmup=1, number=1,
                                sync=s.engine.synchronize)
        except Exception as exc:          # an engine that fails is a result to show, not a crash
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append((name, "FAILED", "—", "—"))
            print_fn(f"{name}: {type(exc).__name__}: {exc}")
            continue
        out[name] = {"check_max_abs": err, "forward": t["forward"], "step": t["step"]}
        rows.append((name, f"{err:.1e}", f"{t['forward'].ms:.2f}", f"{t['step'].ms:.2f}"))
    print_fn(table(["engine", "check max|Δ|", "forward ms", "step ms"], rows))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="cpu", help="cpu (default); another engine (e.g. opencl) adds the seed "
                   "micro-benchmark on it next to the CPU at --seed-size")
    p.add_argument("--seed-size", type=int, default=None, help="N of the seed benchmark (default 4000; --quick 2000)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 15; --quick 5)")
    p.add_argument("--quick", action="store_true", help="fewer repeats, seed at N=2000")
    p.add_argument("--breakdown", default="mlp,mnist", help="per-operation profile of: mlp, mnist, none")
    p.add_argument("--cprofile", action="store_true", help="add cProfile's top functions to each breakdown")
    p.add_argument("--threads", type=int, default=None, help="BLAS/Numba threads (default: all usable CPUs)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    threads = args.threads or common.machine()["cpu"].get("usable_cpus") or 1
    _ctl = common.limit_threads(threads)
    repeats = args.repeats or (5 if args.quick else 15)
    n = args.seed_size or (2000 if args.quick else 4000)
    mach = common.machine(threads)
    print(common.describe_machine(mach))
    out = {"machine": mach, "mlp": run_mlp(repeats)}
    out["seed"] = run_seed(n, max(3, repeats // 3))
    if args.engine.split(":")[0] != "cpu":
        out["engine_seed"] = run_engine_seed(args.engine, n, max(3, repeats // 3))
    out["breakdown"] = {}
    for which in [w.strip() for w in args.breakdown.split(",") if w.strip() and w.strip() != "none"]:
        if which == "mlp":
            out["breakdown"]["mlp"] = breakdown(MLP_SIZES, MLP_ACTS, 128, lambda: dn.SGD(0.01),
                                                title="MLP 784-1024-1024-10, batch 128, SGD",
                                                floor_plan=gemm_plan(MLP_SIZES, 128), cprofile=args.cprofile)
        elif which == "mnist":
            out["breakdown"]["mnist"] = breakdown(MNIST_SIZES, MNIST_ACTS, 128, lambda: dn.Adam(1e-3),
                                                  title="MNIST net 784-256-128-10, batch 128, Adam",
                                                  floor_plan=gemm_plan(MNIST_SIZES, 128), cprofile=args.cprofile)
        else:
            p.error(f"--breakdown takes mlp, mnist or none, got {which!r}")
    out["loadavg_at_end"] = common.loadavg()
    if args.json:
        print("wrote", common.write_json(args.json, out))
    ok = out["mlp"]["check_ok"] and out["seed"]["check_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
