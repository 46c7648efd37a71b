#!/usr/bin/env python
"""GPU check of densenn's CUDA engine: correctness first, then timings beside PyTorch.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU; no network needed
    python benchmarks/gpu_check.py --quick    # smaller sizes (a first smoke test)

1. the device (``densenn.backend.cuda.describe()``);
2. tests: ``pytest tests/test_engine_contract.py -k cuda`` (if that file exists) and any
   ``tests/*cuda*.py``;
3. an engine self-check against the CPU engine in float64 on fresh random data: the
   protocol's array operations called directly (outputs poisoned with NaN first) and their
   non-contiguous fallbacks; activations, costs, accuracy counts and optimizers through the
   same ``densenn.Network`` on both engines (``predict``, ``evaluate``, ``gradients``,
   ``fit``), and the seed's step; later, in (2), a CUDA-graph replay of
   ``TrainingNetwork.step`` against the eager run;
4. benchmarks, each checked against a float64 reference before it is timed
   (‖out − ref‖/‖ref‖ < 1e-3 in float32, < 1e-2 in TF32):
   (1) the seed's micro-benchmark (``densenn.seedbench``), one full training step of x
       10000×10000 through 10000→5000 tanh →1000 sigmoid →10 sigmoid (forward; backward with
       the last layer's output as its signal: δ, ∇w, ∇b, signals), float32 and TF32;
   (2) MLP 784-1024-1024-10 ReLU/softmax, batch 128, SGD step: wall time per step in a
       Python loop, densenn eager, densenn CUDA-graph replay, PyTorch eager (and PyTorch
       graph replay), with kernel launches per step;
   (3) extra GPU memory of the seed step over parameters + input;
   (4) one MNIST epoch (784-256-128-10, Adam 1e-3, batch 128) through densenn.Network.fit.

The densenn side is the library's own: (1) and (3) ``densenn.seedbench.SeedBench``, (2)
``Network`` + ``TrainingNetwork.step`` as ``fit`` runs it, (4) ``Network.fit``. Timings: warm-up, then the
median of repeats, timed with CUDA events (or a host clock after a synchronize). The table at
the end compares with PyTorch and with the targets of PERFORMANCE.md; with ``$OUT`` set, it is
also written to ``$OUT/gpu_check.json``. Exit status: 0 when every correctness check passed,
1 when one failed, 2 when there is no CUDA device.
"""
from __future__ import annotations

import argparse
import gc
import glob
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import densenn as dn  # noqa: E402  (after the path: the checkout's densenn)
from densenn import seedbench  # noqa: E402
from densenn.errors import DensennError  # noqa: E402
from densenn.nn.network import Dense, Network  # noqa: E402
from densenn.optim import SGD, Adam  # noqa: E402

TARGETS = {  # PERFORMANCE.md (H100): ratio targets vs PyTorch, or absolute
    "seed_fp32": "≤ 1.03 × PyTorch",
    "seed_tf32": "≤ 1.03 × PyTorch",
    "mlp_step": "≤ 0.25 ms (stretch 0.10)",
    "mnist_epoch": "≤ 0.15 s",
    "memory": "≤ PyTorch",
}

FAILURES: list[str] = []
RESULTS: dict = {"device": None, "tests": [], "checks": [], "rows": [], "notes": []}


def log(msg=""):
    print(msg, flush=True)


def check(name: str, err: float, tol: float) -> bool:
    ok = bool(np.isfinite(err)) and err < tol
    RESULTS["checks"].append({"name": name, "rel_err": float(err), "tol": tol, "ok": ok})
    if not ok:
        FAILURES.append(f"{name}: rel. error {err:.3g} (tolerance {tol:g})")
    log(f"  {'ok  ' if ok else 'FAIL'} {name}: rel. err {err:.2e} (< {tol:g})")
    return ok


def rel_err(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    if out.shape != ref.shape:
        return float("inf")
    if not np.isfinite(out).all():
        return float("nan")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def row(name, densenn, peer=None, unit="ms", target=None, meets=None, note=""):
    ratio = densenn / peer if (densenn is not None and peer) else None
    RESULTS["rows"].append({"name": name, "densenn": densenn, "pytorch": peer, "unit": unit,
                            "ratio": ratio, "target": target, "meets_target": meets, "note": note})


# =========================================================================================
# tests
# =========================================================================================
def run_tests():
    log("== tests")
    runs = []
    contract = ROOT / "tests" / "test_engine_contract.py"
    if contract.exists():
        runs.append(([str(contract), "-q", "-k", "cuda"], "test_engine_contract.py -k cuda"))
    else:
        log("  tests/test_engine_contract.py does not exist (yet): skipped")
    # the layers and activations on the cuda engine (their other engines' cases are skipped by -k)
    for name in ("test_layers.py", "test_activations_modern.py", "test_gradients.py", "test_network.py"):
        path = ROOT / "tests" / name
        if path.exists():
            runs.append(([str(path), "-q", "-k", "cuda"], f"{name} -k cuda"))
    cuda_files = sorted(p for p in glob.glob(str(ROOT / "tests" / "*cuda*.py")))
    if cuda_files:
        runs.append((cuda_files + ["-q"], " ".join(Path(p).name for p in cuda_files)))
    for argv, label in runs:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", *argv, "-p", "no:cacheprovider"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=150)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = -1, f"timed out after 150 s\n{exc.stdout or ''}"
        tail = "\n".join(out.strip().splitlines()[-15:])
        ok = rc in (0, 5)   # 5: no tests collected
        RESULTS["tests"].append({"run": label, "returncode": rc, "ok": ok, "seconds": time.perf_counter() - t0,
                                 "tail": tail})
        log(f"  {'ok  ' if ok else 'FAIL'} pytest {label}: rc={rc} ({time.perf_counter() - t0:.1f} s)")
        log("    " + tail.replace("\n", "\n    "))
        if not ok:
            FAILURES.append(f"pytest {label} returned {rc}")


# =========================================================================================
# engine self-check against the CPU engine in float64
# =========================================================================================
def self_check(e, cupy):
    """The CUDA engine against the CPU engine (NumPy kernels) in float64, on fresh random data.

    The protocol's array operations (gemm, sum_rows, add_bias, axpy, scal, copy, take_rows,
    their non-contiguous forms) are called directly, outputs poisoned with NaN first. The
    arithmetic that activations, costs, metrics and optimizers declare is checked through
    the network that runs it: the same ``densenn.Network`` (same weights) on both engines,
    its ``predict``, ``evaluate``, ``gradients`` and ``fit`` (TrainingNetwork's step, the
    fused softmax + cross-entropy output included), and the seed's step (``densenn.seedbench``).
    """
    from densenn.backend.cpu import CPUEngine
    from densenn.nn.activation import ACTIVATIONS, ELU, LeakyReLU

    log("== engine self-check (vs the CPU engine in float64; array operations with outputs poisoned with NaN, "
        "the rest through densenn.Network on both engines)")
    cpu = CPUEngine(fused=False)
    rng = np.random.default_rng(1234)
    worst = {}

    def note(name, out, ref, dt):
        err = rel_err(out, ref)
        tol = 1e-4 if dt == np.float32 else 1e-10
        key = f"{name} [{np.dtype(dt).name}]"
        if not (np.isfinite(err) and err < tol):
            FAILURES.append(f"self-check {key}: rel. error {err:.3g} (tolerance {tol:g})")
            log(f"  FAIL {key}: rel. err {err:.3g}")
        worst[key] = max(worst.get(key, 0.0), err if np.isfinite(err) else float("inf"))

    def dev(h, dt=None):
        return e.to_engine(np.ascontiguousarray(h, dtype=dt))

    def poisoned(shape, dt):
        return e.fill(e.empty(shape, dt), np.nan)

    for dt in (np.float32, np.float64):
        f64 = np.float64
        array_operations(e, rng, dt, note, dev, poisoned)
        # -- through the network: activations (forward: bias + activation; backward: the
        # derivative times the signal), on several widths and batch sizes
        acts = [cls() for cls in ACTIVATIONS.values()] + [LeakyReLU(0.2), ELU(0.5)]
        for act in acts:
            for (r, c) in [(300, 37), (7, 1), (64, 1000)]:
                x = (rng.standard_normal((r, 33)) * 2).astype(dt)
                labels = rng.integers(0, 10, r)
                net, ref = twin_networks(e, cpu, 33, [Dense(c, act), Dense(10, "softmax")], dt, rng)
                note(f"forward {act.name}", net.predict(x), ref.predict(x.astype(f64)), dt)
                note(f"gradients {act.name}", flat(net.gradients(x, labels, "crossentropy")),
                     flat(ref.gradients(x.astype(f64), labels, "crossentropy")), dt)
                net.release()
                ref.release()
        # -- costs: value (one block and several), gradient (fused with its partner output or
        # not); evaluate's batch_size sets the rows of one reduction
        for cost, out_act in [("quadratic", "linear"), ("quadratic", "sigmoid"), ("crossentropy", "softmax"),
                              ("binary_crossentropy", "sigmoid"), ("mae", "linear")]:
            net, ref = twin_networks(e, cpu, 33, [Dense(48, "tanh"), Dense(10, out_act)], dt, rng)
            for r in (128, 20000):
                x = rng.standard_normal((r, 33)).astype(dt)
                if cost == "crossentropy":
                    y = rng.integers(0, 10, r)                    # class labels: also counts the correct
                elif cost == "binary_crossentropy":
                    y = rng.integers(0, 2, (r, 10)).astype(dt)
                else:
                    y = rng.standard_normal((r, 10)).astype(dt)
                got, want = net.evaluate(x, y, cost, batch_size=r), ref.evaluate(x.astype(f64), y, cost, batch_size=r)
                note(f"evaluate loss {cost} ({out_act}) {r} rows", got["loss"], want["loss"], dt)
                if r == 128:
                    note(f"gradients {cost} ({out_act})", flat(net.gradients(x, y, cost)),
                         flat(ref.gradients(x.astype(f64), y, cost)), dt)
            net.release()
            ref.release()
        # accuracy counted on the engine (several blocks; one output; ties: zero weights give every
        # class the same output) against the classes predict_classes gives from the same outputs
        # (float32 and float64 outputs may order a near-tie differently, so not the CPU's)
        for (r, c) in [(60000, 10), (300, 1)]:
            for tied in (False, True):
                net, ref = twin_networks(e, cpu, 8, [Dense(c, "sigmoid" if c == 1 else "softmax")], dt, rng)
                if tied:
                    net.set_weights([(np.zeros_like(w), np.zeros_like(b)) for w, b in net.get_weights()])
                x = rng.standard_normal((r, 8)).astype(dt)
                labels = rng.integers(0, max(c, 2), r)
                got = net.evaluate(x, labels, batch_size=r)["accuracy"]
                want = float(np.mean(net.predict_classes(x, batch_size=r) == labels))
                note(f"evaluate accuracy {r}x{c}{' (all tied)' if tied else ''}", got, want, dt)
                net.release()
                ref.release()
        # -- optimizers: two epochs of fit (9 steps, the last batch partial) on both engines
        for name, make in [("sgd", lambda: SGD(0.05)), ("sgd wd=1e-2", lambda: SGD(0.05, weight_decay=1e-2)),
                           ("momentum wd=1e-3", lambda: SGD(0.05, momentum=0.9, weight_decay=1e-3)),
                           ("nesterov", lambda: SGD(0.05, momentum=0.9, nesterov=True)),
                           ("adam", lambda: Adam(1e-3)), ("adam wd=1e-2", lambda: Adam(1e-3, weight_decay=1e-2)),
                           ("adamw 1e-3", lambda: Adam(1e-3, weight_decay=1e-3, decoupled=True))]:
            net, ref = twin_networks(e, cpu, 33, [Dense(64, "relu"), Dense(10, "softmax")], dt, rng)
            x = rng.standard_normal((150, 33)).astype(dt)
            labels = rng.integers(0, 10, 150)
            net.fit(x, labels, epochs=2, batch_size=32, optimizer=make(), progress=False)
            ref.fit(x.astype(f64), labels, epochs=2, batch_size=32, optimizer=make(), progress=False)
            note(f"fit {name}: weights after 2 epochs", flat(net.get_weights()), flat(ref.get_weights()), dt)
            net.release()
            ref.release()
        # -- the seed's step (densenn.seedbench): output and ∇w, ∇b of the three layers
        with seedbench.SeedBench(200, e, dt) as s, seedbench.SeedBench(200, cpu, "float64") as s_ref:
            s.forward()
            s_ref.forward()
            note("seed forward", s.output(), s_ref.output(), dt)
            s.step()
            s_ref.step()
            note("seed step gradients", flat(s.gradients()), flat(s_ref.gradients()), dt)
    # numpy arrays are refused
    try:
        e.axpy(1.0, np.ones(3, np.float32), e.zeros((3,), np.float32))
        FAILURES.append("the engine accepted a NumPy array")
    except Exception as exc:
        if type(exc).__name__ != "DensennError":
            FAILURES.append(f"a NumPy operand raised {type(exc).__name__}, not DensennError")
    bad = {k: v for k, v in worst.items() if not (v < (1e-4 if "float32" in k else 1e-10))}
    log(f"  {len(worst)} operation/dtype groups checked, worst rel. err float32 "
        f"{max(v for k, v in worst.items() if 'float32' in k):.2e}, float64 "
        f"{max(v for k, v in worst.items() if 'float64' in k):.2e}; {len(bad)} over tolerance")
    RESULTS["checks"].append({"name": "engine self-check", "groups": len(worst), "failed": sorted(bad),
                              "ok": not bad})


def array_operations(e, rng, dt, note, dev, poisoned):
    """The protocol's array operations called directly, against NumPy in float64."""
    f64 = np.float64
    # gemm: all transposes, row views, beta != 0
    for (m, n, k) in [(37, 53, 29), (1, 7, 300), (128, 1024, 784), (5, 1, 1)]:
        for ta in (False, True):
            for tb in (False, True):
                ah = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
                bh = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
                ch = rng.standard_normal((m, n)).astype(dt)
                cbig = dev(np.vstack([ch, np.zeros((3, n), dt)]))
                e.gemm(0.75, dev(ah), dev(bh), 0.5, cbig[:m], trans_a=ta, trans_b=tb)
                ref = 0.75 * (ah.T if ta else ah).astype(f64) @ (bh.T if tb else bh).astype(f64) + 0.5 * ch
                got = e.to_host(cbig)
                note("gemm", got[:m], ref, dt)
                if np.any(got[m:] != 0):
                    FAILURES.append("gemm wrote past its [:m] view")
    # sum_rows (one pass and two), add_bias, axpy, scal, copy
    for (r, c) in [(128, 1024), (10000, 1000), (3000, 10), (513, 1)]:
        x = rng.standard_normal((r, c)).astype(dt)
        out = poisoned((c,), dt)
        e.sum_rows(dev(x), out)
        note("sum_rows", e.to_host(out), x.astype(f64).sum(axis=0), dt)
    x = rng.standard_normal((50, 33)).astype(dt)
    y = rng.standard_normal((50, 33)).astype(dt)
    b = rng.standard_normal(33).astype(dt)
    z = dev(x)
    e.add_bias(z, dev(b))
    note("add_bias", e.to_host(z), x.astype(f64) + b, dt)
    yd = dev(y)
    e.axpy(-0.3, dev(x), yd)
    note("axpy", e.to_host(yd), y.astype(f64) - 0.3 * x, dt)
    xd = dev(x)
    e.scal(1.7, xd)
    note("scal", e.to_host(xd), 1.7 * x.astype(f64), dt)
    out = poisoned((50, 33), dt)
    e.copy(dev(x), out)
    note("copy", e.to_host(out), x, dt)
    # non-contiguous arrays (a column slice): refused with a DensennError naming the operation,
    # as the OpenCL engine does, and nothing written
    for name, call in (("add_bias", lambda big: e.add_bias(big[:, :33], dev(b))),
                       ("axpy", lambda big: e.axpy(2.0, dev(y), big[:, 33:]))):
        big = dev(np.hstack([x, y]))
        try:
            call(big)
            FAILURES.append(f"self-check {name} on a column slice: accepted (expected a DensennError)")
        except DensennError as exc:
            if name not in str(exc) or "contiguous" not in str(exc):
                FAILURES.append(f"self-check {name} on a column slice: unclear error {exc}")
        note(f"{name} column slice left unwritten", e.to_host(big), np.hstack([x, y]), dt)
    # take_rows (floats and int32 labels; clipped indices; one upload for both)
    src = rng.standard_normal((1000, 784)).astype(dt)
    lab = rng.integers(0, 10, 1000).astype(np.int32)
    src_d, lab_d = dev(src), dev(lab)
    idx = rng.permutation(1000)[:128]
    idx[3], idx[5] = -4, 5000
    out, out_lab = poisoned((128, 784), dt), e.zeros((128,), np.int32)
    up = e.uploads
    e.take_rows(src_d, idx, out)
    e.take_rows(lab_d, idx, out_lab)
    note("take_rows", e.to_host(out), np.take(src, idx, axis=0, mode="clip"), dt)
    if not (e.to_host(out_lab) == np.take(lab, idx, mode="clip")).all():
        FAILURES.append("take_rows of int32 labels differs from numpy.take(mode='clip')")
    if e.uploads - up != 1:
        FAILURES.append(f"take_rows uploaded the same indices {e.uploads - up} times (expected once)")
    # indices already on the device (what the training loop does: one upload, three gathers)
    idx_d = e.zeros((128,), np.int32)
    e.upload(idx.astype(np.int32), idx_d)
    out = poisoned((128, 784), dt)
    e.take_rows(src_d, idx_d, out)
    note("take_rows device int32 indices", e.to_host(out), np.take(src, idx, axis=0, mode="clip"), dt)
    e.take_rows(src_d, idx_d[:50], out[:50])
    note("take_rows device indices [:50]", e.to_host(out[:50]), np.take(src, idx[:50], axis=0, mode="clip"), dt)


def layers_check(e):
    """Dropout, BatchNorm, LayerNorm and activation layers on the CUDA engine against the CPU
    engine in float64, from the same parameters: gradients, then 3 epochs of fit (the dropout
    masks are the same hash on both engines, so the weights must agree to rounding)."""
    from densenn.backend.cpu import CPUEngine

    log("== layers self-check (Dropout, BatchNorm, LayerNorm, activation layers; vs the CPU engine in float64)")
    cpu = CPUEngine(fused=False)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((96, 20)), rng.integers(0, 4, 96)
    specs = [dn.Dense(32, "relu", norm="batch"), dn.Dropout(0.3), dn.Dense(16, "linear"), dn.LayerNorm(), "tanh",
             dn.Dense(4, "softmax")]
    for dt in (np.float64, np.float32):
        ref = Network(20, specs, engine=cpu, dtype="float64", seed=0)
        net = Network(20, specs, engine=e, dtype=dt, seed=0)
        net.set_tensors(ref.tensors())
        tol = 1e-9 if dt == np.float64 else 2e-3
        name = np.dtype(dt).name
        for label, out, want in (("gradients", flat(net.gradients(x, y)), flat(ref.gradients(x, y))),
                                 ("predict", net.predict(x), ref.predict(x))):
            check(f"layers {label} [{name}]", rel_err(out, want), tol)
        for n in (net, ref):
            n.fit(x, y, epochs=3, batch_size=32, optimizer=dn.Adam(1e-2), progress=False)
        check(f"layers fit, 3 epochs [{name}]", rel_err(flat(net.get_weights()), flat(ref.get_weights())), 10 * tol)
    check("layers finite differences [float64]",
          dn.check_gradients(Network(20, specs, engine=e, dtype="float64", seed=1), x[:24], y[:24]), 1e-6)


def flat(pairs) -> np.ndarray:
    """[(w, b), ...] (weights or gradients) as one float64 vector."""
    return np.concatenate([np.asarray(a, np.float64).ravel() for pair in pairs for a in pair])


def twin_networks(e, cpu, n_in, specs, dt, rng):
    """The same network on the device engine in ``dt`` and on ``cpu`` in float64: random weights
    (rounded to ``dt``, so both start from the very same numbers), biases not zero."""
    net = Network(n_in, specs, engine=e, dtype=dt, seed=0)
    weights = [((rng.standard_normal(w.shape) / np.sqrt(w.shape[1])).astype(dt),
                (0.1 * rng.standard_normal(b.shape)).astype(dt)) for w, b in net.get_weights()]
    net.set_weights(weights)
    ref = Network(n_in, specs, engine=cpu, dtype="float64", seed=0)
    ref.set_weights(weights)
    return net, ref


def init_weights(sizes, rng, dtype=np.float32):
    return [((rng.standard_normal((o, i)) / math.sqrt(i)).astype(dtype), (0.1 * rng.standard_normal(o)).astype(dtype))
            for i, o in zip(sizes[:-1], sizes[1:])]


def torch_tf32(torch, on: bool):
    """PyTorch's float32 matmuls on TF32 tensor cores (on) or in full float32 (off)."""
    torch.set_float32_matmul_precision("high" if on else "highest")


def torch_grads(torch, x, y, weights, acts, cost, dtype, tf32=False, device="cuda"):
    """Gradients (dw, db per layer) of the mean cost, from PyTorch autograd in ``dtype``."""
    import torch.nn.functional as F

    torch_tf32(torch, tf32)
    ws = [torch.as_tensor(w, device=device, dtype=dtype).requires_grad_() for w, _ in weights]
    bs = [torch.as_tensor(b, device=device, dtype=dtype).requires_grad_() for _, b in weights]
    h = torch.as_tensor(x, device=device, dtype=dtype) if isinstance(x, np.ndarray) else x.to(dtype)
    t = torch.as_tensor(y, device=device, dtype=dtype) if isinstance(y, np.ndarray) else y.to(dtype)
    fns = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}
    for i, (w, b) in enumerate(zip(ws, bs)):
        z = F.linear(h, w, b)
        h = z if (acts[i] == "softmax") else fns[acts[i]](z)
    n = h.shape[0]
    if cost == "quadratic":
        loss = 0.5 * ((h - t) ** 2).sum() / n
    else:   # softmax + cross-entropy, from the logits
        loss = -(t * torch.log_softmax(h, dim=1)).sum() / n
    loss.backward()
    torch_tf32(torch, False)
    return [g.grad.double().cpu().numpy() for pair in zip(ws, bs) for g in pair], float(loss.detach()) * n


def cupy_time(cupy, fn, warmup=2, reps=10):
    """Median milliseconds of fn() on the device, with CUDA events."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def torch_time(torch, fn, warmup=2, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def loop_time(sync, fn, steps, repeats=5, warmup=20):
    """Median wall milliseconds per call of fn() over `steps` calls in a Python loop."""
    for _ in range(warmup):
        fn()
    sync()
    per = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        per.append((time.perf_counter() - t0) * 1e3 / steps)
    return statistics.median(per)


# =========================================================================================
# (1) the seed's micro-benchmark, and (3) its memory
# =========================================================================================
def seed_bench(e, cupy, torch, quick):
    n = 2000 if quick else seedbench.SEED_SIZE
    log(f"== (1) seed micro-benchmark (densenn.seedbench): x {n}×{n}, {seedbench.describe(n)}, one full "
        f"training step (forward; backward with the last layer's output as its signal)")
    flops = seedbench.flops(n)["step"]
    e.release_all()
    base0 = e.pool_used_bytes()
    # parameters first (x stays on the host), then the training network: the memory count is
    # what it adds beyond them and its copy of the input x
    s = seedbench.SeedBench(n, e, "float32", attach=False)
    e.synchronize()
    param_bytes = e.pool_used_bytes() - base0
    s.attach()
    input_bytes = s.nbytes()["input"]
    s.step()
    e.synchronize()
    dn_extra = e.pool_used_bytes() - base0 - param_bytes - input_bytes
    err_fwd = s.check()
    if not err_fwd < s.tolerance():
        FAILURES.append(f"seed forward float32 differs from float64 NumPy by {err_fwd:.3g} (max |Δ|, 64 rows)")
    log(f"  forward output vs float64 NumPy (64 rows): max |Δ| {err_fwd:.1e}")
    # reference: PyTorch float64 on the same data and weights
    ref = torch_seed_grads(torch, s.x_host, s.weights, torch.float64)
    s.step()
    err32 = max(rel_err(g, r) for g, r in zip(flat_list(s.gradients()), ref))
    check("seed step float32 (∇w, ∇b of 3 layers) vs float64", err32, 1e-3)
    e.set_tf32(True)
    s.step()
    err_tf = max(rel_err(g, r) for g, r in zip(flat_list(s.gradients()), ref))
    check("seed step TF32 vs float64", err_tf, 1e-2)
    e.set_tf32(False)

    launches0 = e.launches
    s.step()
    launches = e.launches - launches0
    dn32 = cupy_time(cupy, s.step, warmup=2, reps=10)
    e.set_tf32(True)
    dntf = cupy_time(cupy, s.step, warmup=2, reps=10)
    e.set_tf32(False)

    # PyTorch: same data and weights, float32, its own memory
    torch.cuda.synchronize()
    tx = torch.as_tensor(s.x_host, device="cuda")
    tw = [torch.as_tensor(w, device="cuda").requires_grad_() for w, _ in s.weights]
    tb = [torch.as_tensor(b, device="cuda").requires_grad_() for _, b in s.weights]
    s.release()

    def torch_step():
        for p in tw + tb:
            p.grad = None
        a = torch_seed_forward(torch, tx, tw, tb)
        a.backward(a.detach())      # the seed's step: the last layer's signal is its own output

    torch_tf32(torch, False)
    torch_step()
    terr = max(rel_err(p.grad.double().cpu().numpy(), r) for p, r in
               zip([q for pair in zip(tw, tb) for q in pair], ref))
    log(f"  (PyTorch float32 vs float64: rel. err {terr:.2e})")
    pt32 = torch_time(torch, torch_step, warmup=2, reps=10)
    torch_tf32(torch, True)
    pttf = torch_time(torch, torch_step, warmup=2, reps=10)
    torch_tf32(torch, False)
    # PyTorch's extra memory: peak during a step over parameters + input (+ its cuBLAS workspace)
    for p in tw + tb:
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t_base = torch.cuda.memory_allocated()
    torch_step()
    torch.cuda.synchronize()
    pt_extra = torch.cuda.max_memory_allocated() - t_base
    log(f"  densenn float32 {dn32:.2f} ms ({flops / dn32 / 1e9:.1f} TFLOP/s), TF32 {dntf:.2f} ms; "
        f"PyTorch float32 {pt32:.2f} ms, TF32 {pttf:.2f} ms; densenn launches per step: {launches}")
    log(f"  extra memory over parameters+input: densenn {dn_extra / 1e6:.0f} MB (CuPy pool; the training "
        f"network's copy of x and cuBLAS's own workspace not counted), PyTorch {pt_extra / 1e6:.0f} MB "
        f"(peak allocated)")
    tag = "quick sizes" if quick else ""
    row("(1) seed step float32", dn32, pt32, "ms", TARGETS["seed_fp32"], dn32 <= 1.03 * pt32, tag)
    row("(1) seed step TF32", dntf, pttf, "ms", TARGETS["seed_tf32"], dntf <= 1.03 * pttf, tag)
    row("(3) seed step extra memory", dn_extra / 1e6, pt_extra / 1e6, "MB", TARGETS["memory"],
        dn_extra <= pt_extra, tag)


def flat_list(pairs) -> list:
    """[(w, b), ...] as [w, b, ...]."""
    return [a for pair in pairs for a in pair]


def torch_seed_forward(torch, x, ws, bs):
    import torch.nn.functional as F

    h = x
    for w, b, act in zip(ws, bs, seedbench.ACTIVATIONS):
        h = F.linear(h, w, b)
        h = torch.tanh(h) if act == "tanh" else torch.sigmoid(h)
    return h


def torch_seed_grads(torch, x, weights, dtype, device="cuda"):
    """[∇w, ∇b, ...] of the seed's step from PyTorch autograd in ``dtype`` (∂C/∂a = a: C = ½·Σa²)."""
    torch_tf32(torch, False)
    ws = [torch.as_tensor(w, device=device, dtype=dtype).requires_grad_() for w, _ in weights]
    bs = [torch.as_tensor(b, device=device, dtype=dtype).requires_grad_() for _, b in weights]
    a = torch_seed_forward(torch, torch.as_tensor(x, device=device, dtype=dtype), ws, bs)
    a.backward(a.detach())
    grads = [g.grad.double().cpu().numpy() for pair in zip(ws, bs) for g in pair]
    del a, ws, bs
    torch.cuda.empty_cache()
    return grads


# =========================================================================================
# (2) MLP step: eager, graph replay, PyTorch
# =========================================================================================
class MLPStep:
    """One training step of ``net`` on a fixed batch, as ``fit`` runs it: the network's
    TrainingNetwork (for plain SGD the one that folds the update into its GEMMs), the
    optimizer bound to its parameters, the batch loaded once; calling it runs
    ``TrainingNetwork.step`` (forward, fused softmax + cross-entropy, backward, update)."""

    def __init__(self, net, xh, labels, optimizer, cost="crossentropy"):
        e = net.engine
        self.net, self.opt, self.n = net, optimizer, len(xh)
        self.tn = net.trainer(self.n, cost, gradients=not optimizer.folds_into_gemm)     # as fit makes it
        optimizer.bind(e, self.tn.params, net.dtype)
        y = np.eye(net.n_out, dtype=net.dtype)[labels]
        xs, ys = e.to_engine(np.ascontiguousarray(xh, net.dtype)), e.to_engine(y)
        ls = e.to_engine(np.asarray(labels).astype(self.tn.labels.dtype))
        self.tn.load(xs, ys, ls, np.arange(self.n, dtype=self.tn.idx.dtype))
        for buf in (xs, ys, ls):
            e.release(buf)

    def __call__(self):
        self.tn.step(self.n, self.opt, 0.0, True)


def mlp_network(e, sizes, acts, weights):
    net = Network(sizes[0], [Dense(u, a) for u, a in zip(sizes[1:], acts)], engine=e, dtype="float32")
    net.set_weights(weights)
    return net


def mlp_bench(e, cupy, torch):
    import torch.nn.functional as F

    from densenn.backend.cuda import CUDAEngine

    sizes, acts, batch, lr = [784, 1024, 1024, 10], ["relu", "relu", "softmax"], 128, 0.01
    log("== (2) MLP 784-1024-1024-10 ReLU/softmax, batch 128, SGD step (TrainingNetwork.step; wall time "
        "per step in a loop)")
    rng = np.random.default_rng(3)
    weights = init_weights(sizes, rng)
    xh = rng.standard_normal((batch, 784)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    yh = np.eye(10, dtype=np.float32)[labels]
    net = mlp_network(e, sizes, acts, weights)
    ref, ref_loss = torch_grads(torch, xh, yh, weights, acts, "crossentropy", torch.float64)
    err = max(rel_err(g, r) for g, r in zip(flat_list(net.gradients(xh, labels, "crossentropy")), ref))
    check("MLP gradients float32 vs float64", err, 1e-3)
    check("MLP loss float32 vs float64", rel_err(net.evaluate(xh, labels)["loss"], ref_loss / batch), 1e-3)

    # graph replay == eager: the same 5 SGD steps both ways on an engine whose GEMMs always
    # take the graph's cuBLAS handle (bitwise the same path), and on the default engine
    g_e = CUDAEngine(graph_gemm=True)
    results = {}
    for mode in ("eager", "graph"):
        gnet = mlp_network(g_e, sizes, acts, weights)
        step = MLPStep(gnet, xh, labels, SGD(lr))
        if mode == "eager":
            for _ in range(5):
                step()
        else:
            replay = g_e.capture(step, warmup=1)   # the warm-up is step 1
            for _ in range(4):
                replay()
            replay.release()
        results[mode] = flat(gnet.get_weights())
        gnet.release()
    diff = rel_err(results["graph"], results["eager"])
    bitwise = bool(np.array_equal(results["graph"], results["eager"]))
    check("graph replay vs eager, 5 SGD steps (same cuBLAS handle)", diff, 1e-6)
    log(f"  graph replay bitwise equal to eager: {bitwise}")
    dnet = mlp_network(e, sizes, acts, weights)
    step = MLPStep(dnet, xh, labels, SGD(lr))
    for _ in range(5):
        step()
    default = flat(dnet.get_weights())
    dnet.release()
    check("default eager path vs graph-handle eager path, 5 SGD steps", rel_err(default, results["eager"]), 1e-5)
    RESULTS["notes"].append(f"graph replay bitwise equal to eager (graph_gemm engine): {bitwise}")

    # timings
    steps = 200
    sync = e.synchronize
    step = MLPStep(net, xh, labels, SGD(lr))
    l0 = e.launches
    step()
    launches = e.launches - l0
    eager = loop_time(sync, step, steps)
    replay = e.capture(step, warmup=1)
    graph = loop_time(sync, replay, steps)
    log(f"  densenn eager {eager * 1e3:.0f} µs/step ({launches} launches per step), graph replay "
        f"{graph * 1e3:.0f} µs/step (1 launch; {replay.captured_launches} recorded)")

    model = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                                torch.nn.ReLU(), torch.nn.Linear(1024, 10)).cuda()
    with torch.no_grad():
        for layer, (w, b) in zip([model[0], model[2], model[4]], weights):
            layer.weight.copy_(torch.as_tensor(w))
            layer.bias.copy_(torch.as_tensor(b))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tx = torch.as_tensor(xh, device="cuda")
    tl = torch.as_tensor(labels, device="cuda")

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tx), tl)
        loss.backward()
        opt.step()

    pt = loop_time(torch.cuda.synchronize, torch_step, steps)
    pt_graph = None
    try:   # PyTorch whole-step CUDA graph, as in its documentation
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                torch_step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(g):
            static_loss = F.cross_entropy(model(tx), tl)
            static_loss.backward()
            opt.step()
        pt_graph = loop_time(torch.cuda.synchronize, g.replay, steps)
    except Exception as exc:
        log(f"  (PyTorch graph capture failed: {type(exc).__name__}: {exc})")
    log(f"  PyTorch eager {pt * 1e3:.0f} µs/step" + (f", graph replay {pt_graph * 1e3:.0f} µs/step" if pt_graph else ""))
    row("(2) MLP step, densenn eager", eager, pt, "ms", TARGETS["mlp_step"], eager <= 0.25,
        f"{launches} launches/step")
    row("(2) MLP step, densenn graph replay", graph, pt, "ms", TARGETS["mlp_step"], graph <= 0.25,
        f"1 launch/step ({replay.captured_launches} recorded)")
    if pt_graph:
        row("(2) MLP step, PyTorch graph replay (peer)", pt_graph, pt, "ms", None, None, "for reference")
    RESULTS["mlp_launches_per_step"] = launches
    replay.release()
    g_e.close()


# =========================================================================================
# (4) MNIST epoch through densenn.Network
# =========================================================================================
def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist_data():
    """(x_train, y_train, x_test, y_test, source description).

    MNIST from $DENSENN_MNIST or ../shared/data/mnist (the shared folder does not
    travel to a device machine: copy it into an ignored folder and name it in
    DENSENN_MNIST), else synthetic data of the same shape.
    """
    from densenn import datasets

    for d in [os.environ.get("DENSENN_MNIST", ""), ROOT.parent / "shared/data/mnist", ROOT / "shared/data/mnist"]:
        if d and Path(d).is_dir():
            try:
                m = datasets.load_mnist(d)
            except Exception as exc:
                log(f"MNIST in {d} unusable: {exc}")
                continue
            return m.x_train, m.y_train, m.x_test, m.y_test, f"MNIST (IDX files in {d})"
    rng = np.random.default_rng(5)
    proj = rng.standard_normal((784, 10)).astype(np.float32)
    xtr = rng.uniform(0, 1, (60000, 784)).astype(np.float32)
    xte = rng.uniform(0, 1, (10000, 784)).astype(np.float32)
    return xtr, (xtr @ proj).argmax(1), xte, (xte @ proj).argmax(1), "synthetic data of MNIST's shape (no MNIST found)"


def mnist_bench(e, cupy, torch):
    import torch.nn.functional as F

    try:
        from densenn.nn.network import Dense, Network
        from densenn.optim import Adam
    except Exception as exc:
        log(f"== (4) MNIST epoch: skipped, densenn.nn.network is not usable ({exc})")
        RESULTS["notes"].append(f"MNIST epoch skipped: {exc}")
        return
    xtr, ytr, xte, yte, source = load_mnist_data()
    log(f"== (4) MNIST epoch, 784-256-128-10 ReLU/softmax, Adam 1e-3, batch 128 — data: {source}")
    net = Network(784, [Dense(256, "relu"), Dense(128, "relu"), Dense(10, "softmax")], engine=e, seed=0)
    hist = net.fit(xtr, ytr, epochs=3, batch_size=128, optimizer=Adam(1e-3), progress=False)
    secs = list(hist["seconds"])
    acc = float((net.predict(xte).argmax(1) == yte).mean())
    dn = statistics.median(secs[1:])
    log(f"  densenn epochs: {', '.join(f'{s:.3f}' for s in secs)} s (first includes compiling); "
        f"test accuracy after 3 epochs {acc:.4f}")
    if "synthetic" not in source and acc < 0.95:
        FAILURES.append(f"MNIST test accuracy after 3 epochs is {acc:.4f} (< 0.95)")

    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X = torch.as_tensor(xtr, device="cuda")
    Y = torch.as_tensor(np.asarray(ytr, np.int64), device="cuda")

    def epoch():
        perm = torch.randperm(X.shape[0], device="cuda")
        for i in range(0, X.shape[0], 128):
            idx = perm[i:i + 128]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(X[idx]), Y[idx]).backward()
            opt.step()
        torch.cuda.synchronize()

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t0)
    pt = statistics.median(times[1:])
    log(f"  PyTorch eager epochs: {', '.join(f'{s:.3f}' for s in times)} s")
    row("(4) MNIST epoch", dn, pt, "s", TARGETS["mnist_epoch"], dn <= 0.15,
        f"{source}; acc {acc:.4f} after 3 epochs")


# =========================================================================================
def print_table():
    log("")
    log("== summary (densenn vs PyTorch in this run; ratio = densenn / PyTorch)")
    head = f"{'benchmark':40s} {'densenn':>10s} {'PyTorch':>10s} {'unit':>4s} {'ratio':>7s}  {'target':26s} {'met':>4s}"
    log(head)
    log("-" * len(head))
    for r in RESULTS["rows"]:
        d = f"{r['densenn']:.3f}" if r["densenn"] is not None else "-"
        p = f"{r['pytorch']:.3f}" if r["pytorch"] is not None else "-"
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "-"
        met = {True: "yes", False: "NO", None: ""}[r["meets_target"]]
        log(f"{r['name']:40s} {d:>10s} {p:>10s} {r['unit']:>4s} {ratio:>7s}  {r['target'] or '':26s} {met:>4s}"
            + (f"  {r['note']}" if r["note"] else ""))
    log("")
    log(f"correctness: {'all checks passed' if not FAILURES else f'{len(FAILURES)} FAILED'}")
    for f in FAILURES:
        log(f"  FAIL {f}")


def write_json():
    out = os.environ.get("OUT")
    if not out:
        return
    RESULTS["failures"] = FAILURES
    path = Path(out) / "gpu_check.json"
    path.write_text(json.dumps(RESULTS, indent=1, default=str))
    log(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller seed benchmark (a smoke test)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run pytest")
    ap.add_argument("--skip-bench", action="store_true", help="correctness only")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    from densenn.backend import cuda as dcuda

    info = dcuda.describe()
    RESULTS["device"] = info
    if not info["available"]:
        reason = info["reason"] or "unknown reason"
        log(reason if reason.startswith("no CUDA device") else f"no CUDA device: {reason}")
        log("gpu_check needs a machine with an NVIDIA GPU and CuPy (pip install 'densenn[cuda]').")
        write_json()
        return 2
    dev = info["devices"][0]
    log(f"device: {dev.get('name')} (compute capability {dev.get('compute_capability')}, "
        f"{dev.get('memory_bytes', 0) / 2**30:.1f} GiB, {dev.get('multiprocessors')} SMs); CuPy {info['cupy']}, "
        f"CUDA runtime {info['cuda_runtime']}, driver {info['cuda_driver']}, NVRTC {info['nvrtc']}")
    import cupy

    from densenn.backend.cuda import CUDAEngine

    if not args.skip_tests:
        run_tests()
    e = CUDAEngine(tf32=False)
    for name, fn in [("self-check", lambda: self_check(e, cupy)), ("layers self-check", lambda: layers_check(e))]:
        try:
            t0 = time.perf_counter()
            fn()
            log(f"  ({name}: {time.perf_counter() - t0:.1f} s)")
        except Exception:
            FAILURES.append(f"{name} raised:\n{traceback.format_exc()}")
            log(traceback.format_exc())
    if not args.skip_bench:
        try:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False")
            log(f"PyTorch {torch.__version__}")
        except Exception as exc:
            torch = None
            log(f"PyTorch is not usable ({exc}): benchmarks skipped")
            RESULTS["notes"].append(f"benchmarks skipped: PyTorch not usable ({exc})")
        if torch is not None:
            for name, fn in [("seed benchmark", lambda: seed_bench(e, cupy, torch, args.quick)),
                             ("MLP benchmark", lambda: mlp_bench(e, cupy, torch)),
                             ("MNIST benchmark", lambda: mnist_bench(e, cupy, torch))]:
                try:
                    t0 = time.perf_counter()
                    fn()
                    log(f"  ({name}: {time.perf_counter() - t0:.1f} s)")
                except Exception:
                    FAILURES.append(f"{name} raised:\n{traceback.format_exc()}")
                    log(traceback.format_exc())
                gc.collect()               # the benchmark's arrays go back to the pools
                torch.cuda.empty_cache()
                e.release_all()
    RESULTS["seconds"] = time.perf_counter() - t_start
    print_table()
    log(f"total {RESULTS['seconds']:.0f} s")
    write_json()
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
