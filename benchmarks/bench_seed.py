"""run.py's section ``seed``: the seed's micro-benchmark (``densenn.seedbench``) beside its peers."""
from __future__ import annotations

import common
import numpy as np
import step_overhead as so
from common import fmt, interleaved, ratio, table
from peers import log, target_rounds, torch_model, try_jax, try_torch

from densenn import seedbench


def section_seed(args, res):
    torch, why = try_torch()
    jax, why_jax = try_jax()
    n = args.seed_size
    log(f"\n== the seed's micro-benchmark: x {n}×{n}, {n}→{n // 2} tanh →{n // 10} sigmoid →10 sigmoid, float32 ==")
    log("step = forward + backward (δ, ∇w, ∇b, signal; the last layer's signal is its own output, i.e. "
        "∂C/∂a = a; no input gradient, no optimizer update) in every library")
    s = seedbench.SeedBench(n, "cpu", "float32")
    out = {"size": n, "checks": {}, "skipped": {}}
    out["checks"]["densenn_forward_max_abs_vs_float64"] = s.check()
    s.forward()
    a_dn = s.output()                   # read before backward: a is scratch there
    s.step()
    g_dn = s.gradients()
    fns_f, fns_s = {"densenn": s.forward}, {"densenn": s.step}
    sync = None
    if torch is not None:
        # a tensor of PyTorch's own: its allocator, like densenn's engine, starts buffers on a
        # 64-byte line, where NumPy's x_host starts 16 bytes past one and MKL reads it ~2% slower
        x_t = torch.from_numpy(s.x_host).clone()
        model = torch_model(s.weights, seedbench.ACTIVATIONS)
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
            for (w, b), act in zip(p, seedbench.ACTIVATIONS):
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
    flops = seedbench.flops(n)
    out["gflop_step"], out["gflop_forward"] = flops["step"] / 1e9, flops["forward"] / 1e9
    rows = [(k, f"{tf[k].ms:.1f}", f"{flops['forward'] / tf[k].median / 1e9:.0f}", f"{ts[k].ms:.1f}",
             f"{flops['step'] / ts[k].median / 1e9:.0f}",
             fmt(ratio(ts["densenn"].median, ts[k].median)) if k != "densenn" else "") for k in fns_s]
    log(table(["library", "forward ms", "GFLOP/s", "step ms", "GFLOP/s", "densenn/this (step)"], rows))
    s.release()
    return out
