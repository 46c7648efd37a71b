"""History: the per-epoch metrics of a fit."""
from __future__ import annotations

import os

import numpy as np

from densenn.files import atomic_write


class History:
    """Per-epoch metrics of a ``fit``: ``history["loss"]``, ``["accuracy"]``,
    ``["val_loss"]``, ``["val_accuracy"]``, ``["lr"]``, ``["seconds"]``."""

    def __init__(self):
        self.history: dict[str, list] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [],
                                         "lr": [], "seconds": []}

    def __getitem__(self, key):
        return self.history[key]

    def append(self, **logs):
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    @property
    def epochs(self) -> int:
        return len(self.history["loss"])

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in self.history.items() if v and any(x is not None for x in v)}

    def plot(self, path, title: str = "training") -> str:
        """Write loss and accuracy curves (train and validation) to a PNG at ``path`` (atomically)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        h = self.history
        epochs = np.arange(1, self.epochs + 1)
        has_acc = any(v is not None for v in h["accuracy"])
        fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4))
        axes = np.atleast_1d(axes)
        axes[0].plot(epochs, h["loss"], label="train")
        if any(v is not None for v in h["val_loss"]):
            axes[0].plot(epochs, h["val_loss"], label="validation")
        axes[0].set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
        axes[0].legend()
        if has_acc:
            axes[1].plot(epochs, [100 * v for v in h["accuracy"]], label="train")
            if any(v is not None for v in h["val_accuracy"]):
                axes[1].plot(epochs, [100 * v for v in h["val_accuracy"]], label="validation")
            axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: accuracy")
            axes[1].legend()
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        try:
            with atomic_write(path, "plot path") as tmp:
                fig.savefig(tmp, dpi=100, format="png")
        finally:
            plt.close(fig)
        return os.fspath(path)

    def __repr__(self):
        return f"History(epochs={self.epochs}, final={ {k: v[-1] for k, v in self.to_dict().items()} })"
