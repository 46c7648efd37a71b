"""run.py's section ``memory``: the memory of a training step, each case in a fresh process
(``run.py --child memory:LIB:CASE`` runs :func:`memory_child`)."""
from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from pathlib import Path

import common
import numpy as np
import step_overhead as so
from common import fmt, ratio, table
from peers import MLP_LR, log, torch_model, torch_trainer, try_torch

import densenn as dn
from densenn import seedbench

RUN = Path(__file__).resolve().with_name("run.py")

def _status() -> dict:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")      # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def memory_child(lib: str, case: str, seed_size: int, threads: int) -> dict:
    """Run in a fresh process: memory of a training step of ``case`` in ``lib`` (see section_memory)."""
    import tracemalloc

    common.limit_threads(threads)
    out = {"lib": lib, "case": case}
    steps = 3
    if lib == "densenn":
        # compile/initialise library code on a tiny network first, so it isn't counted
        tiny = so.build_mlp([8, 6, 6, 3], so.MLP_ACTS, 4, dn.SGD(0.01), n_data=16) if case == "mlp" \
            else seedbench.SeedBench(seedbench.MIN_SIZE)
        for _ in range(2):
            tiny.step()
        # weights and data exist before the baseline, in the form each library trains from
        if case == "mlp":
            net = dn.Network(784, [dn.Dense(u, a) for u, a in zip(so.MLP_SIZES[1:], so.MLP_ACTS)], seed=0)
            rng = np.random.default_rng(1)
            x = rng.random((16384, 784), dtype=np.float32)
            labels = rng.integers(0, 10, 16384)
            y = np.zeros((16384, 10), np.float32)
            y[np.arange(16384), labels] = 1
            order = np.random.default_rng(2).permutation(16384)
        else:
            s = seedbench.SeedBench(seed_size, "cpu", "float32", attach=False)     # weights; x on the host
        gc.collect()
        base = _status()["VmRSS"]
        hwm_ok = _reset_hwm()
        tracemalloc.start()
        if case == "mlp":
            # what training adds: the trainer's buffers, optimizer state, whatever the steps take
            opt = dn.SGD(MLP_LR)
            tn = net.trainer(128, "crossentropy", gradients=not opt.folds_into_gemm)     # as fit makes it
            opt.bind(net.engine, tn.params, net.dtype)
            e = net.engine
            xs, ys, ls = e.to_engine(x, net.dtype), e.to_engine(y), e.to_engine(labels.astype(tn.labels.dtype))
            order = order.astype(tn.idx.dtype)
            views = [order[i * 128:(i + 1) * 128] for i in range(128)]
            state = {"i": 0}

            def step():
                i = state["i"]
                state["i"] = (i + 1) % 128
                tn.load(xs, ys, ls, views[i])
                tn.step(128, opt, 0.0, True)

            owned = lambda: {**net.nbytes(), "optimizer": opt.nbytes()}  # noqa: E731
        else:
            # the training network: the training layers, and its batch buffer, into which x is
            # copied; that copy is the data (PyTorch trains from the host array itself), so it
            # is taken off the RSS figures below and reported as input_copy_bytes
            s.attach()
            step = s.step
            input_copy = s.nbytes()["input"]
            out["input_copy_bytes"] = input_copy

            def owned():
                nb = s.nbytes()
                return {"training layers (z, a, dw, db, work)": nb["layers"], "weights": nb["weights"],
                        "x (the training network's batch)": nb["input"], "other training buffers": nb["unused"]}
        for _ in range(steps):
            step()
        cur, peak = tracemalloc.get_traced_memory()
        st = _status()
        copied = out.get("input_copy_bytes", 0)
        out["first_steps_tracemalloc_peak"] = peak - copied
        out["extra_rss_peak"] = st["VmHWM"] - base - copied if hwm_ok else None
        out["rss_after"] = st["VmRSS"] - base - copied
        # steady state, garbage collector off (garbage counts as growth): the transient peak of
        # each step over what was traced before it, and what the steps leave behind
        gc.collect()
        gc.disable()
        # one pass over all 128 batches first: NumPy's take keeps a small object per index
        # array it has gathered with (4.8-7.6 KB for 128 batches, then no more; traced over
        # 50, 200 and 1000 steps), which a 10-step warm-up left inside the measured window
        for _ in range(138 if case == "mlp" else 10):
            step()

        def transient(fn):
            c0 = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            fn()
            return tracemalloc.get_traced_memory()[1] - c0

        calib = max(transient(lambda: None) for _ in range(5))     # the measurement's own objects
        n = 50
        peaks = [0] * n
        mine = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__),
                tracemalloc.Filter(False, common.__file__)]
        tracemalloc.take_snapshot().filter_traces(mine)             # fills fnmatch's/re's caches first
        snap0 = tracemalloc.take_snapshot().filter_traces(mine)
        for k in range(n):
            peaks[k] = transient(step)
        snap1 = tracemalloc.take_snapshot().filter_traces(mine)
        gc.enable()
        diff = [d for d in snap1.compare_to(snap0, "lineno") if d.size_diff]
        out["steady_bytes_growth_per_step"] = sum(d.size_diff for d in diff) / n
        out["steady_growth_sources"] = [f"{d.traceback}: {d.size_diff:+d} B" for d in diff[:5]]
        out["steady_transient_peak_per_step"] = max(max(peaks) - calib, 0)
        out["owned_bytes"] = owned()
        tracemalloc.stop()
        out["method"] = ("RSS: VmHWM − VmRSS (/proc/self/status) around building the training buffers + 3 "
                         "steps, weights and data made before; tracemalloc (NumPy reports to it): the peak of "
                         "one steady step over what was traced before it, and what 50 steps leave behind "
                         "(gc off); seed: less the copy of x in the training network's batch buffer")
    elif lib == "torch":
        import torch
        from torch.profiler import ProfilerActivity, profile

        tiny = torch_model([(np.ones((6, 8), np.float32), np.zeros(6, np.float32)),
                            (np.ones((3, 6), np.float32), np.zeros(3, np.float32))], ["relu", "softmax"])
        tl = torch.nn.functional.cross_entropy(tiny(torch.ones(4, 8)), torch.zeros(4, dtype=torch.long))
        tl.backward()
        torch.optim.SGD(tiny.parameters(), lr=0.1).step()
        if case == "mlp":
            net = dn.Network(784, [dn.Dense(u, a) for u, a in zip(so.MLP_SIZES[1:], so.MLP_ACTS)], seed=0)
            model = torch_model(net.get_weights(), so.MLP_ACTS)
            rng = np.random.default_rng(1)
            x = rng.random((16384, 784), dtype=np.float32)
            labels = rng.integers(0, 10, 16384)
            order = np.random.default_rng(2).permutation(16384)
            batches = [order[i * 128:(i + 1) * 128] for i in range(128)]
            del net
        else:
            xs_host, weights = seedbench.draw(seed_size)
            x_t = torch.from_numpy(xs_host)
            model = torch_model(weights, seedbench.ACTIVATIONS)
            del weights
            params = list(model.parameters())
        gc.collect()
        base = _status()["VmRSS"]
        hwm_ok = _reset_hwm()
        if case == "mlp":
            step = torch_trainer(model, x, labels, batches, torch.optim.SGD(model.parameters(), lr=MLP_LR))[0]
        else:
            def step():
                for p in params:
                    p.grad = None
                a = model(x_t)
                a.backward(a.detach())
        for _ in range(steps):
            step()
        st = _status()
        out["extra_rss_peak"] = st["VmHWM"] - base if hwm_ok else None
        out["rss_after"] = st["VmRSS"] - base
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        evs = prof.events()
        out["steady_bytes_allocated_per_step"] = int(sum(e.self_cpu_memory_usage for e in evs
                                                         if e.self_cpu_memory_usage > 0))
        out["method"] = ("RSS: VmHWM − VmRSS from /proc/self/status around the first 3 steps (model and data "
                         "made before); bytes allocated per step: torch.profiler(profile_memory=True), sum of "
                         "the positive self allocations of one steady-state step. tracemalloc does not see "
                         "PyTorch's allocator.")
    return out


def section_memory(args, res):
    torch, why = try_torch()
    log("\n== memory of a training step (each measured in a fresh process) ==")
    out = {"skipped": {}}
    libs = ["densenn"] + (["torch"] if torch is not None else [])
    if torch is None:
        out["skipped"]["PyTorch"] = why
    for case in ("mlp", "seed"):
        for lib in libs:
            cmd = [sys.executable, str(RUN), "--child", f"memory:{lib}:{case}",
                   "--threads", str(args.threads), "--seed-size", str(args.seed_size)]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                line = [l for l in p.stdout.splitlines() if l.startswith("{")]
                if p.returncode != 0 or not line:
                    raise RuntimeError(f"exit {p.returncode}: {p.stderr[-2000:]}")
                out[f"{case}:{lib}"] = json.loads(line[-1])
            except Exception as exc:
                out[f"{case}:{lib}"] = {"error": str(exc)}
                log(f"memory {case} {lib}: {exc}")
    mib = lambda b: None if b is None else b / 2**20  # noqa: E731
    rows = []
    for case, title in (("mlp", "MLP 784-1024-1024-10, batch 128, SGD"),
                        ("seed", f"seed step, x {args.seed_size}×{args.seed_size}")):
        d, t = out.get(f"{case}:densenn", {}), out.get(f"{case}:torch", {})
        rows.append((title, "extra RSS peak (MiB)", fmt(mib(d.get("extra_rss_peak"))), fmt(mib(t.get("extra_rss_peak"))),
                     fmt(ratio(d.get("extra_rss_peak"), t.get("extra_rss_peak")))))
        rows.append(("", "bytes allocated per steady step", f"transient peak {d.get('steady_transient_peak_per_step', '—')}, "
                     f"kept {d.get('steady_bytes_growth_per_step', '—')}",
                     f"{t.get('steady_bytes_allocated_per_step', '—')} (profiler)" if t else "—", ""))
        if d.get("owned_bytes"):
            rows.append(("", "densenn owns (MiB)", ", ".join(f"{k} {v / 2**20:.1f}" for k, v in d["owned_bytes"].items()
                                                            if isinstance(v, (int, float))), "", ""))
    log(table(["case", "what", "densenn", "PyTorch", "densenn/PyTorch"], rows))
    log("methods: " + d.get("method", "") + " | " + t.get("method", ""))
    return out
