#!/usr/bin/env python
"""densenn against its peers on the CPU: the one benchmark entry point.

    python benchmarks/run.py                  # everything (~10 min on 2 cores)
    python benchmarks/run.py --quick          # a smoke run: few epochs and repeats, seed at N=2000
    python benchmarks/run.py --only mlp,seed  # some sections: mlp, seed, mnist, scaling, memory

Peers: PyTorch (CPU), scikit-learn's MLPClassifier, and JAX (a jit-compiled step) when
``import jax`` works. All get the same threads (``--threads``, default all usable CPUs),
the same architecture, the same initial weights (densenn's, copied), the same batches.
Every comparison is checked for correctness before it is timed, and timed interleaved
(one sample of each library per round) so a noisy machine hurts all alike. See
docs/benchmarks.md for what each row means.

Writes ``benchmarks/results/run.json`` (machine description + every number) and
``benchmarks/results/scaling.png``. Exit status 1 if a correctness check failed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

import common
from common import fmt, interleaved, ratio, table
import step_overhead as so

import densenn as dn

SECTIONS = ("mlp", "seed", "mnist", "scaling", "memory")
MLP_LR = 0.01
TARGETS = {  # PERFORMANCE.md, CPU: densenn / PyTorch in the same run
    "mlp_step": 0.85,
    "seed_step": 1.0,
    "mnist_epoch": 0.5,
    "mnist_acc_points": 0.3,
}


def log(*a):
    print(*a, flush=True)


# -- peers ------------------------------------------------------------------------------------
def try_torch():
    try:
        import torch
        return torch, None
    except Exception as exc:
        return None, f"PyTorch not importable ({type(exc).__name__}: {exc}); pip install torch==2.13.0"


def try_jax():
    try:
        import jax
        jax.config.update("jax_platforms", "cpu")
        import jax.numpy  # noqa: F401
        return jax, None
    except Exception as exc:
        return None, f"JAX skipped: `import jax` failed ({type(exc).__name__}: {exc})"


def try_sklearn():
    try:
        from sklearn.neural_network import MLPClassifier  # noqa: F401
        return True, None
    except Exception as exc:
        return False, f"scikit-learn not importable ({type(exc).__name__}: {exc})"


ACT_MODULES = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def torch_model(weights, acts):
    """nn.Sequential of Linear + activation with densenn's (w, b) copied in; softmax is left to the loss."""
    import torch

    mods = []
    for (w, b), act in zip(weights, acts):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, np.float32)))
        mods.append(lin)
        if act in ACT_MODULES:
            mods.append(getattr(torch.nn, ACT_MODULES[act])())
        elif act != "softmax":
            raise ValueError(act)
    return torch.nn.Sequential(*mods)


def torch_trainer(model, x, labels, batches, optimizer):
    """A PyTorch step as a plain training loop does it: gather the batch, forward, loss, backward, update."""
    import torch
    import torch.nn.functional as F

    X = torch.from_numpy(x)
    Y = torch.from_numpy(np.asarray(labels, np.int64))
    idx = [torch.from_numpy(np.asarray(b, np.int64)) for b in batches]
    state = {"i": 0}

    def step():
        i = state["i"]
        state["i"] = (i + 1) % len(idx)
        xb = X.index_select(0, idx[i])
        yb = Y.index_select(0, idx[i])
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, X, Y


def sklearn_clf(weights, hidden, **kw):
    """An MLPClassifier whose initial weights are densenn's (its initialiser is replaced per instance)."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), activation="relu", alpha=0.0, **kw)
    it = iter([(w.copy(), b.copy()) for w, b in weights])

    def _init_coef(fan_in, fan_out, dtype):
        w, b = next(it)
        assert w.shape == (fan_out, fan_in), (w.shape, fan_in, fan_out)
        return np.ascontiguousarray(w.T, dtype=dtype), b.astype(dtype)

    clf._init_coef = _init_coef
    return clf


def quiet_sklearn():
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)


# -- JAX: jit-compiled equivalents --------------------------------------------------------------
def jax_mlp(jax, weights, acts):
    jnp = jax.numpy
    fns = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "softmax": lambda h: h}
    params = [(jnp.asarray(w, dtype=jnp.float32), jnp.asarray(b, dtype=jnp.float32)) for w, b in weights]

    def logits(p, x):
        h = x
        for (w, b), act in zip(p, acts):
            h = fns[act](h @ w.T + b)
        return h

    def loss(p, x, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(p, x)), y[:, None], axis=1))

    return params, logits, loss


def target_rounds(args) -> int:
    """Samples per library for a row with a target: 2·repeats - 1 (21 by default).

    On this shared machine one sample of a step swings by ±10% with the neighbours' load,
    and between runs the median of 11 moved a ratio by up to ±5%; twice the samples halve
    the rounds a burst of load can tip.
    """
    return max(3, 2 * args.repeats - 1)


# -- 1. the MLP step ------------------------------------------------------------------------------
def section_mlp(args, res):
    torch, why = try_torch()
    has_sk, why_sk = try_sklearn()
    jax, why_jax = try_jax()
    sizes, acts, batch = so.MLP_SIZES, so.MLP_ACTS, 128
    log(f"\n== MLP {'-'.join(map(str, sizes))} ReLU/softmax, cross-entropy, batch {batch}, float32, SGD lr {MLP_LR} ==")
    log("step = gather a shuffled batch from a 16384-sample set + forward + loss + backward + SGD update "
        "(all libraries); forward = forward pass incl. softmax on a loaded batch")
    m = so.build_mlp(sizes, acts, batch, dn.SGD(MLP_LR))
    w0 = m.net.get_weights()
    out = {"sizes": sizes, "batch": batch, "checks": {}, "skipped": {}}
    fns_step, fns_fwd = {"densenn": m.step}, {"densenn": m.forward}

    # correctness: densenn's forward against float64 NumPy, PyTorch and sklearn on the same batch and weights
    out["checks"]["densenn_forward_vs_float64"] = so.check_mlp(m)
    idx = m.engine.to_host(m.tn.idx).astype(np.int64)
    xb, yb = m.x[idx], m.labels[idx]
    a_dn = m.engine.to_host(m.tn.layers[-1].a).copy()
    m.train()                                   # one step on exactly this batch
    upd_dn = [(w1 - w, b1 - b) for (w, b), (w1, b1) in zip(w0, m.net.get_weights())]

    def update_err(new):
        return max(max(common.rel_err(nw - w, uw), common.rel_err(nb - b, ub))
                   for (w, b), (nw, nb), (uw, ub) in zip(w0, new, upd_dn))

    if torch is not None:
        model = torch_model(w0, acts)
        with torch.no_grad():
            a_t = torch.softmax(model(torch.from_numpy(xb)), dim=1).numpy()
        out["checks"]["torch_forward_rel_err"] = common.rel_err(a_dn, a_t)
        opt_t = torch.optim.SGD(model.parameters(), lr=MLP_LR)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        opt_t.zero_grad()
        loss.backward()
        opt_t.step()
        lins = [mod for mod in model if isinstance(mod, torch.nn.Linear)]
        out["checks"]["torch_sgd_update_rel_err"] = update_err(
            [(l.weight.detach().numpy(), l.bias.detach().numpy()) for l in lins])
        # fresh model for timing (same initial weights)
        model = torch_model(w0, acts)
        opt_t = torch.optim.SGD(model.parameters(), lr=MLP_LR)
        t_step, X, _ = torch_trainer(model, m.x, m.labels, m.batches, opt_t)
        xb_t = torch.from_numpy(xb).clone()      # PyTorch-owned, 64-byte aligned (as in the seed section)

        def t_forward():
            with torch.no_grad():
                return torch.softmax(model(xb_t), dim=1)

        fns_step["PyTorch"], fns_fwd["PyTorch"] = t_step, t_forward
    else:
        out["skipped"]["PyTorch"] = why
        log(why)
    if has_sk:
        quiet_sklearn()
        clf = sklearn_clf(w0, sizes[1:-1], solver="sgd", learning_rate_init=MLP_LR, momentum=0.0,
                          nesterovs_momentum=False, batch_size=batch, shuffle=False, max_iter=1)
        clf.partial_fit(xb, yb, classes=np.arange(sizes[-1]))
        out["checks"]["sklearn_sgd_update_rel_err"] = update_err(
            [(c.T, i) for c, i in zip(clf.coefs_, clf.intercepts_)])
        sk_state = {"i": 0}

        def sk_step():
            i = sk_state["i"]
            sk_state["i"] = (i + 1) % len(m.batches)
            bi = m.batches[i]
            clf.partial_fit(m.x[bi], m.labels[bi])

        fns_step["scikit-learn"] = sk_step
    else:
        out["skipped"]["scikit-learn"] = why_sk
    sync_jax = None
    if jax is not None:
        jnp = jax.numpy
        params, logits, loss_fn = jax_mlp(jax, w0, acts)
        Xj, Yj = jnp.asarray(m.x), jnp.asarray(m.labels.astype(np.int32))
        idx_j = [jnp.asarray(b.astype(np.int32)) for b in m.batches]

        @jax.jit
        def jstep(p, i):
            g = jax.grad(loss_fn)(p, Xj[i], Yj[i])
            return jax.tree_util.tree_map(lambda a, b: a - MLP_LR * b, p, g)

        jfwd = jax.jit(lambda p, x: jax.nn.softmax(logits(p, x), axis=1))
        a_j = np.asarray(jfwd(params, jnp.asarray(xb)))
        out["checks"]["jax_forward_rel_err"] = common.rel_err(a_dn, a_j)
        new = jstep(params, jnp.asarray(idx.astype(np.int32)))
        out["checks"]["jax_sgd_update_rel_err"] = update_err([(np.asarray(w), np.asarray(b)) for w, b in new])
        js = {"p": params, "i": 0}
        xb_j = jnp.asarray(xb)

        def j_step():
            i = js["i"]
            js["i"] = (i + 1) % len(idx_j)
            js["p"] = jstep(js["p"], idx_j[i])

        def j_forward():
            js["out"] = jfwd(js["p"], xb_j)

        def sync_jax():
            jax.block_until_ready(js.get("p"))
            if "out" in js:
                jax.block_until_ready(js["out"])

        fns_step["JAX"], fns_fwd["JAX"] = j_step, j_forward
    else:
        out["skipped"]["JAX"] = why_jax
        log(why_jax)
    checks_ok = all(v < (1e-4 if "forward" in k else 1e-3) for k, v in out["checks"].items())
    out["checks_ok"] = checks_ok
    log("checks: " + ", ".join(f"{k} {v:.1e}" for k, v in out["checks"].items())
        + ("  (ok)" if checks_ok else "  WRONG"))

    plan = so.gemm_plan(sizes, batch)
    fns_step["GEMM floor"] = so.floor_fn(plan)
    fns_fwd["GEMM floor"] = so.floor_fn(plan, forward_only=True)
    # samples of ~0.2 s (~20 steps): the steady state of a training loop. With 20 ms samples
    # (3 steps) each sample held the first step after the settling pause, when the BLAS
    # threads are asleep and the caches cold, and the samples swung by 2x here.
    t = interleaved(fns_step, repeats=target_rounds(args), warmup=3, sync=sync_jax, target_s=0.2)
    tf = interleaved(fns_fwd, repeats=args.repeats, warmup=3, sync=sync_jax, target_s=0.2)
    out["step"], out["forward"] = t, tf
    flops = so.step_flops(sizes, batch)
    out["gflop_step"], out["gflop_forward"] = flops["step"] / 1e9, flops["forward"] / 1e9
    rows = []
    for name in fns_step:
        rows.append((name, f"{t[name].ms:.3f}", f"{t[name].min * 1e3:.3f}",
                     f"{tf[name].ms:.3f}" if name in tf else "—",
                     fmt(ratio(t["densenn"].median, t[name].median)) if name != "densenn" else ""))
    log(table(["library", "step ms (median)", "step ms (min)", "forward ms", "densenn/this (step)"], rows))
    return out


# -- 2. the seed's micro-benchmark ------------------------------------------------------------------
def section_seed(args, res):
    torch, why = try_torch()
    jax, why_jax = try_jax()
    n = args.seed_size
    log(f"\n== the seed's micro-benchmark: x {n}×{n}, {n}→{n // 2} tanh →{n // 10} sigmoid →10 sigmoid, float32 ==")
    log("step = forward + backward (δ, ∇w, ∇b, signal; the last layer's signal is its own output, i.e. "
        "∂C/∂a = a; no input gradient, no optimizer update) in every library")
    s = so.build_seed(n)
    out = {"size": n, "checks": {}, "skipped": {}}
    out["checks"]["densenn_forward_max_abs_vs_float64"] = so.check_seed(s)
    s.forward()
    a_dn = s.engine.to_host(s.training[-1].a).copy()    # read before backward: a is scratch there
    s.step()
    g_dn = [(s.engine.to_host(t.dw).copy(), s.engine.to_host(t.db).copy()) for t in s.training]
    fns_f, fns_s = {"densenn": s.forward}, {"densenn": s.step}
    sync = None
    if torch is not None:
        # a tensor of PyTorch's own: its allocator, like densenn's engine, starts buffers on a
        # 64-byte line, where NumPy's x_host starts 16 bytes past one and MKL reads it ~2% slower
        x_t = torch.from_numpy(s.x_host).clone()
        model = torch_model(s.weights, so.SEED_ACTS)
        params = list(model.parameters())

        def t_forward():
            with torch.no_grad():
                return model(x_t)

        def t_step():
            for p in params:
                p.grad = None
            a = model(x_t)
            a.backward(a.detach())

        a_t = t_forward().numpy()
        out["checks"]["torch_forward_rel_err"] = common.rel_err(a_dn, a_t)
        t_step()
        lins = [mod for mod in model if isinstance(mod, torch.nn.Linear)]
        out["checks"]["torch_grad_rel_err"] = max(
            max(common.rel_err(l.weight.grad.numpy(), gw), common.rel_err(l.bias.grad.numpy(), gb))
            for l, (gw, gb) in zip(lins, g_dn))
        fns_f["PyTorch"], fns_s["PyTorch"] = t_forward, t_step
    else:
        out["skipped"]["PyTorch"] = why
        log(why)
    if jax is not None:
        jnp = jax.numpy
        fns = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}
        jparams = [(jnp.asarray(w), jnp.asarray(b)) for w, b in s.weights]
        xj = jnp.asarray(s.x_host)

        def fwd(p, x):
            h = x
            for (w, b), act in zip(p, so.SEED_ACTS):
                h = fns[act](h @ w.T + b)
            return h

        jfwd = jax.jit(fwd)

        @jax.jit
        def jstep(p, x):
            a, vjp = jax.vjp(lambda q: fwd(q, x), p)
            return vjp(a)[0]

        out["checks"]["jax_forward_rel_err"] = common.rel_err(a_dn, np.asarray(jfwd(jparams, xj)))
        g = jstep(jparams, xj)
        out["checks"]["jax_grad_rel_err"] = max(
            max(common.rel_err(np.asarray(gw), dw), common.rel_err(np.asarray(gb), db))
            for (gw, gb), (dw, db) in zip(g, g_dn))
        js = {}
        fns_f["JAX"] = lambda: js.__setitem__("f", jfwd(jparams, xj))
        fns_s["JAX"] = lambda: js.__setitem__("s", jstep(jparams, xj))

        def sync():
            for v in js.values():
                jax.block_until_ready(v)
    else:
        out["skipped"]["JAX"] = why_jax
    tol = {"densenn_forward_max_abs_vs_float64": 1e-3}
    out["checks_ok"] = all(v < tol.get(k, 1e-4 if "forward" in k else 1e-3) for k, v in out["checks"].items())
    log("checks: " + ", ".join(f"{k} {v:.1e}" for k, v in out["checks"].items())
        + ("  (ok)" if out["checks_ok"] else "  WRONG"))
    plan = so.gemm_plan(s.sizes, n)
    fns_f["GEMM floor"] = so.floor_fn(plan, forward_only=True)
    fns_s["GEMM floor"] = so.floor_fn(plan)
    tf = interleaved(fns_f, repeats=max(3, args.repeats), warmup=1, number=1, sync=sync)
    ts = interleaved(fns_s, repeats=target_rounds(args), warmup=1, number=1, sync=sync)
    out["forward"], out["step"] = tf, ts
    flops = so.step_flops(s.sizes, n)
    out["gflop_step"], out["gflop_forward"] = flops["step"] / 1e9, flops["forward"] / 1e9
    rows = [(k, f"{tf[k].ms:.1f}", f"{flops['forward'] / tf[k].median / 1e9:.0f}", f"{ts[k].ms:.1f}",
             f"{flops['step'] / ts[k].median / 1e9:.0f}",
             fmt(ratio(ts["densenn"].median, ts[k].median)) if k != "densenn" else "") for k in fns_s]
    log(table(["library", "forward ms", "GFLOP/s", "step ms", "GFLOP/s", "densenn/this (step)"], rows))
    for x in s.training + s.layers:
        x.release()
    return out


# -- 3. MNIST -----------------------------------------------------------------------------------------
def section_mnist(args, res):
    from densenn.datasets import load_mnist

    torch, why = try_torch()
    has_sk, why_sk = try_sklearn()
    jax, why_jax = try_jax()
    sizes, acts, batch, lr = so.MNIST_SIZES, so.MNIST_ACTS, 128, 1e-3
    log(f"\n== MNIST {'-'.join(map(str, sizes))} ReLU/softmax, cross-entropy, Adam {lr}, batch {batch}, "
        f"shuffled each epoch, {args.epochs} epochs ==")
    try:
        data = load_mnist(common.MNIST_DIR)
    except Exception as exc:
        reason = f"MNIST not loadable from {common.MNIST_DIR}: {type(exc).__name__}: {exc}"
        log(reason)
        return {"skipped_all": reason}
    xtr, ytr, xte, yte = data.x_train, np.asarray(data.y_train), data.x_test, np.asarray(data.y_test)
    n = len(xtr)
    net = dn.Network(sizes[0], [dn.Dense(u, a) for u, a in zip(sizes[1:], acts)], dtype="float32", seed=0)
    w0 = net.get_weights()
    opt = dn.Adam(lr)
    libs = {}          # name -> (run one epoch, test accuracy)
    out = {"epochs": args.epochs, "n_train": n, "skipped": {}, "per_epoch": {}}

    def dn_epoch():
        h = net.fit(xtr, ytr, epochs=1, batch_size=batch, optimizer=opt, progress=False)
        out.setdefault("densenn_fit_loop_s", []).append(h["seconds"][-1])

    libs["densenn"] = (dn_epoch, lambda: net.evaluate(xte, yte)["accuracy"])
    if torch is not None:
        import torch.nn.functional as F

        model = torch_model(w0, acts)
        opt_t = torch.optim.Adam(model.parameters(), lr=lr)
        X, Y = torch.from_numpy(np.ascontiguousarray(xtr)), torch.from_numpy(ytr.astype(np.int64))
        Xte = torch.from_numpy(np.ascontiguousarray(xte))
        gen = torch.Generator().manual_seed(0)

        def t_epoch():
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch):
                idx = perm[i:i + batch]
                loss = F.cross_entropy(model(X.index_select(0, idx)), Y.index_select(0, idx))
                opt_t.zero_grad(set_to_none=True)
                loss.backward()
                opt_t.step()

        def t_acc():
            with torch.no_grad():
                return float((model(Xte).argmax(1).numpy() == yte).mean())

        libs["PyTorch"] = (t_epoch, t_acc)
    else:
        out["skipped"]["PyTorch"] = why
    if has_sk:
        quiet_sklearn()
        clf = sklearn_clf(w0, sizes[1:-1], solver="adam", learning_rate_init=lr, batch_size=batch, shuffle=True,
                          random_state=np.random.RandomState(0), max_iter=1)
        classes = np.arange(sizes[-1])

        def sk_epoch():
            clf.partial_fit(xtr, ytr, classes=classes)

        libs["scikit-learn"] = (sk_epoch, lambda: float(clf.score(xte, yte)))
    else:
        out["skipped"]["scikit-learn"] = why_sk
    if jax is not None:
        jnp = jax.numpy
        params, logits, loss_fn = jax_mlp(jax, w0, acts)
        Xj, Yj, Xtej = jnp.asarray(xtr), jnp.asarray(ytr.astype(np.int32)), jnp.asarray(xte)
        b1, b2, eps = 0.9, 0.999, 1e-8
        st = {"p": params, "m": jax.tree_util.tree_map(jnp.zeros_like, params),
              "v": jax.tree_util.tree_map(jnp.zeros_like, params), "t": 0}
        rng = np.random.default_rng(0)

        @jax.jit
        def jstep(p, m_, v_, t, idx):
            g = jax.grad(loss_fn)(p, Xj[idx], Yj[idx])
            m_ = jax.tree_util.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m_, g)
            v_ = jax.tree_util.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v_, g)
            step = lr * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p = jax.tree_util.tree_map(lambda w, a, b: w - step * a / (jnp.sqrt(b) + eps * jnp.sqrt(1 - b2 ** t)),
                                       p, m_, v_)
            return p, m_, v_

        def j_epoch():
            perm = rng.permutation(n).astype(np.int32)
            for i in range(0, n, batch):
                st["t"] += 1
                st["p"], st["m"], st["v"] = jstep(st["p"], st["m"], st["v"], jnp.float32(st["t"]),
                                                  jnp.asarray(perm[i:i + batch]))
            jax.block_until_ready(st["p"])

        jfwd = jax.jit(logits)
        libs["JAX"] = (j_epoch, lambda: float((np.asarray(jfwd(st["p"], Xtej)).argmax(1) == yte).mean()))
        out["jax_note"] = "the first JAX epoch includes jit compilation (two batch shapes)"
    else:
        out["skipped"]["JAX"] = why_jax
    for why_ in out["skipped"].values():
        log(why_)
    # the initial networks agree
    a0 = net.predict(xte[:256])
    if torch is not None:
        with torch.no_grad():
            a0t = torch.softmax(model(Xte[:256]), 1).numpy()
        out["check_initial_forward_rel_err_torch"] = common.rel_err(a0, a0t)
        log(f"check: initial forward densenn vs PyTorch rel. err {out['check_initial_forward_rel_err_torch']:.1e}")
    # epochs, interleaved: epoch e of every library before epoch e+1 of any
    per = {k: {"seconds": [], "test_accuracy": []} for k in libs}
    hdr = ["epoch"] + [f"{k} {c}" for k in libs for c in ("s", "acc %")]
    log(table(hdr, []).splitlines()[0])
    for epoch in range(args.epochs):
        row = [str(epoch + 1)]
        for name, (run_epoch, acc) in libs.items():
            gc.collect()
            common.settle()
            t0 = time.perf_counter()
            run_epoch()
            dt = time.perf_counter() - t0
            a = acc()
            per[name]["seconds"].append(dt)
            per[name]["test_accuracy"].append(a)
            row += [f"{dt:.2f}", f"{100 * a:.2f}"]
        log("  ".join(f"{c:>{max(len(h), 5)}}" for c, h in zip(row, hdr)))
    for name, p in per.items():
        secs, accs = p["seconds"], p["test_accuracy"]
        p["median_s_per_epoch"] = float(np.median(secs))
        p["median_s_per_epoch_after_first"] = float(np.median(secs[1:])) if len(secs) > 1 else secs[0]
        p["final_accuracy"] = accs[-1]
        first = next((i for i, a in enumerate(accs) if a >= 0.98), None)
        p["epoch_to_98"] = None if first is None else first + 1
        p["seconds_to_98"] = None if first is None else float(sum(secs[:first + 1]))
    out["per_epoch"] = per
    if "densenn_fit_loop_s" in out:
        setup = np.median(np.array(per["densenn"]["seconds"]) - np.array(out["densenn_fit_loop_s"]))
        out["densenn_fit_setup_s"] = float(setup)
        log(f"densenn: each fit(epochs=1) call spends {setup * 1e3:.0f} ms outside its epoch loop "
            f"(checks, targets, transfer); the s/epoch above include it")
    return out


# -- 4. scaling ------------------------------------------------------------------------------------------
def section_scaling(args, res):
    torch, why = try_torch()
    widths = [256, 512, 1024, 2048, 4096]
    batches = [32, 64, 128, 256, 512, 1024]
    log(f"\n== scaling: MLP 784-w-w-10 training step (gather + SGD step), width {widths} at batch 128, "
        f"batch {batches} at width 1024 ==")
    out = {"width": [], "batch": [], "skipped": {}}
    if torch is None:
        out["skipped"]["PyTorch"] = why
        log(why)
    reps = max(3, args.repeats // 2)

    def point(width, batch):
        sizes = [784, width, width, 10]
        m = so.build_mlp(sizes, so.MLP_ACTS, batch, dn.SGD(MLP_LR), n_data=max(8192, 8 * batch))
        fns = {"densenn": m.step}
        if torch is not None:
            model = torch_model(m.net.get_weights(), so.MLP_ACTS)
            fns["PyTorch"] = torch_trainer(model, m.x, m.labels, m.batches,
                                           torch.optim.SGD(model.parameters(), lr=MLP_LR))[0]
        fns["GEMM floor"] = so.floor_fn(so.gemm_plan(sizes, batch))
        t = interleaved(fns, repeats=reps, warmup=2)
        r = {"width": width, "batch": batch, **{k: v.median * 1e3 for k, v in t.items()},
             "gflop": so.step_flops(sizes, batch)["step"] / 1e9}
        m.net.release()
        return r

    rows = []
    for w in widths:
        r = point(w, 128)
        out["width"].append(r)
        rows.append(("width", w, 128, *[f"{r.get(k, float('nan')):.3f}" for k in ("densenn", "PyTorch", "GEMM floor")],
                     fmt(ratio(r["densenn"], r.get("PyTorch")))))
    for b in batches:
        r = point(1024, b)
        out["batch"].append(r)
        rows.append(("batch", 1024, b, *[f"{r.get(k, float('nan')):.3f}" for k in ("densenn", "PyTorch", "GEMM floor")],
                     fmt(ratio(r["densenn"], r.get("PyTorch")))))
    log(table(["vary", "width", "batch", "densenn ms", "PyTorch ms", "GEMM floor ms", "densenn/PyTorch"], rows))
    out["png"] = plot_scaling(out, args.out_dir / "scaling.png")
    log(f"wrote {out['png']}")
    return out


def plot_scaling(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"densenn": dict(marker="o"), "PyTorch": dict(marker="s"),
              "GEMM floor": dict(linestyle="--", color="gray", marker=".")}
    for ax, key, xlabel, title in ((axes[0], "width", "hidden width w (batch 128)", "step time vs width"),
                                   (axes[1], "batch", "batch size (width 1024)", "step time vs batch")):
        pts = out[key]
        xs = [p[key] for p in pts]
        for lib, st in styles.items():
            if all(lib in p for p in pts):
                ax.plot(xs, [p[lib] for p in pts], label=lib, **st)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set(xlabel=xlabel, ylabel="ms per training step (median)", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle("MLP 784-w-w-10 ReLU/softmax, float32, SGD step incl. batch gather (same threads); "
                 f"load average {common.loadavg()}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)


# -- 5. memory ----------------------------------------------------------------------------------------------
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
            else so.build_seed(20)
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
            s = so.build_seed(seed_size, attach_training=False)
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
            s.attach()
            step = s.step
            owned = lambda: {"training layers (z, a, dw, db, work)": sum(  # noqa: E731
                sum(t.nbytes().values()) for t in s.training),
                "weights": sum(l.nbytes() for l in s.layers), "x": int(s.x.nbytes)}
        for _ in range(steps):
            step()
        cur, peak = tracemalloc.get_traced_memory()
        st = _status()
        out["first_steps_tracemalloc_peak"] = peak
        out["extra_rss_peak"] = st["VmHWM"] - base if hwm_ok else None
        out["rss_after"] = st["VmRSS"] - base
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
                         "(gc off)")
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
            rng = np.random.default_rng(0)
            xs_host = rng.random((seed_size, seed_size), dtype=np.float32) * 2 - 1
            x_t = torch.from_numpy(xs_host)
            sizes = so.seed_sizes(seed_size)
            model = torch_model([(rng.standard_normal((o, i), dtype=np.float32) / np.float32(np.sqrt(i)),
                                  np.zeros(o, np.float32)) for i, o in zip(sizes, sizes[1:])], so.SEED_ACTS)
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
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"memory:{lib}:{case}",
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
    p.add_argument("--repeats", type=int, default=None, help="timed samples per measurement (default 11; --quick 3); rows with a target take 2·repeats-1")
    p.add_argument("--seed-size", type=int, default=None, help="N of the seed benchmark (default 4000; --quick 2000)")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: usable CPUs)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS, help="where run.json and scaling.png go")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = args.threads or common._cpu_info().get("usable_cpus") or 1
    args.epochs = args.epochs or (3 if args.quick else 20)
    args.repeats = args.repeats or (3 if args.quick else 11)
    args.seed_size = args.seed_size or (2000 if args.quick else 4000)
    if args.child:
        _, lib, case = args.child.split(":")
        print(json.dumps(memory_child(lib, case, args.seed_size, args.threads), default=common._jsonable))
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
            res[name] = globals()[f"section_{name}"](args, res)
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
