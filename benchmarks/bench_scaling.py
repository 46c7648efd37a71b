"""run.py's section ``scaling``: the MLP step over widths and batch sizes, beside PyTorch."""
from __future__ import annotations

import os
from pathlib import Path

import common
import step_overhead as so
from common import fmt, interleaved, ratio, table
from peers import MLP_LR, log, torch_model, torch_trainer, try_torch

import densenn as dn


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
