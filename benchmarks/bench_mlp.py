"""run.py's section ``mlp``: the MLP 784-1024-1024-10 SGD step and forward pass beside its peers."""
from __future__ import annotations

import common
import numpy as np
import step_overhead as so
from common import fmt, interleaved, ratio, table
from peers import (
    MLP_LR,
    jax_mlp,
    log,
    quiet_sklearn,
    sklearn_clf,
    target_rounds,
    torch_model,
    torch_trainer,
    try_jax,
    try_sklearn,
    try_torch,
)

import densenn as dn


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
