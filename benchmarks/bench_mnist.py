"""run.py's section ``mnist``: MNIST epochs (Adam, batch 128) beside the peers, interleaved."""
from __future__ import annotations


import common
import numpy as np
import step_overhead as so
from peers import jax_mlp, log, quiet_sklearn, sklearn_clf, torch_model, try_jax, try_sklearn, try_torch

import densenn as dn


def section_mnist(args, res):
    torch, why = try_torch()
    has_sk, why_sk = try_sklearn()
    jax, why_jax = try_jax()
    sizes, acts, batch, lr = so.MNIST_SIZES, so.MNIST_ACTS, 128, 1e-3
    log(f"\n== MNIST {'-'.join(map(str, sizes))} ReLU/softmax, cross-entropy, Adam {lr}, batch {batch}, "
        f"shuffled each epoch, {args.epochs} epochs ==")
    data, skipped = common.load_mnist_or_skip(log)
    if skipped:
        return skipped
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
    per = common.interleaved_epochs(libs, args.epochs, log)
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
