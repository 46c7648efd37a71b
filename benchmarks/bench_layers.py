"""run.py's section ``layers``: MNIST with BatchNorm and Dropout beside PyTorch, interleaved.

784 → [Dense 512 (linear) → BatchNorm → ReLU → Dropout 0.2] × 2 → Dense 10 softmax,
cross-entropy, Adam 1e-3, batch 128, shuffled each epoch, 10 epochs (``--layer-epochs``).
PyTorch runs the same architecture (``nn.BatchNorm1d(momentum=0.1)``: its momentum weighs the
new batch, densenn's the running value; ``nn.Dropout(0.2)``) from densenn's initial Dense
weights, with subnormals flushed (``torch.set_flush_denormal(True)``; densenn's kernels flush
them too) and the same threads. Dropout masks come from each library's own generator, so
the runs are not step-for-step identical: compare accuracies to a few tenths of a point.
Test accuracy is measured in inference mode after each epoch (outside the timed region).
"""
from __future__ import annotations


import common
import numpy as np
from peers import log, try_torch

import densenn as dn

SIZES = (784, 512, 512, 10)
RATE, BATCH, LR = 0.2, 128, 1e-3


def densenn_net() -> dn.Network:
    hidden = []
    for units in SIZES[1:-1]:
        hidden += [dn.Dense(units, "relu", norm="batch"), dn.Dropout(RATE)]
    return dn.Network(SIZES[0], hidden + [dn.Dense(SIZES[-1], "softmax")], seed=0)


def torch_net(torch, dense_weights):
    """The same architecture, its Linear layers holding densenn's initial (w, b)."""
    mods = []
    for i, (w, b) in enumerate(dense_weights):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, np.float32)))
        mods.append(lin)
        if i < len(dense_weights) - 1:
            mods += [torch.nn.BatchNorm1d(w.shape[0], momentum=0.1, eps=1e-5), torch.nn.ReLU(), torch.nn.Dropout(RATE)]
    return torch.nn.Sequential(*mods)


def section_layers(args, res):
    epochs = getattr(args, "layer_epochs", None) or 10
    log(f"\n== MNIST {'-'.join(map(str, SIZES))}, BatchNorm + ReLU + Dropout {RATE} per hidden layer, Adam {LR}, "
        f"batch {BATCH}, {epochs} epochs ==")
    data, skipped = common.load_mnist_or_skip(log)
    if skipped:
        return skipped
    xtr, ytr, xte, yte = data.x_train, np.asarray(data.y_train), data.x_test, np.asarray(data.y_test)
    n = len(xtr)
    net = densenn_net()
    dense_w = [(net.engine.to_host(la.w), net.engine.to_host(la.b)) for la in net.layers
               if isinstance(la, dn.DenseInference)]
    opt = dn.Adam(LR)
    libs = {"densenn": (lambda: net.fit(xtr, ytr, epochs=1, batch_size=BATCH, optimizer=opt, progress=False),
                        lambda: net.evaluate(xte, yte)["accuracy"])}
    out = {"epochs": epochs, "skipped": {}}
    torch, why = try_torch()
    if torch is not None:
        import torch.nn.functional as F

        torch.set_flush_denormal(True)
        model = torch_net(torch, dense_w)
        opt_t = torch.optim.Adam(model.parameters(), lr=LR)
        X, Y = torch.from_numpy(np.ascontiguousarray(xtr)), torch.from_numpy(ytr.astype(np.int64))
        Xte = torch.from_numpy(np.ascontiguousarray(xte))
        gen = torch.Generator().manual_seed(0)

        def t_epoch():
            model.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, BATCH):
                idx = perm[i:i + BATCH]
                loss = F.cross_entropy(model(X.index_select(0, idx)), Y.index_select(0, idx))
                opt_t.zero_grad(set_to_none=True)
                loss.backward()
                opt_t.step()

        def t_acc():
            model.eval()
            with torch.no_grad():
                return float((model(Xte).argmax(1).numpy() == yte).mean())

        libs["PyTorch"] = (t_epoch, t_acc)
    else:
        out["skipped"]["PyTorch"] = why
        log(why)
    per = common.interleaved_epochs(libs, epochs, log)
    for p in per.values():
        p["median_s_per_epoch"] = float(np.median(p["seconds"]))
        p["final_accuracy"] = p["test_accuracy"][-1]
    out["per_epoch"] = per
    return out
