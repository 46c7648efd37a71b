"""A training run for tests/test_workflow.py's kill-and-resume test, in a process of its own.

    python workflow_worker.py full OUT.npz           train without a checkpoint, save the weights
    python workflow_worker.py run CKPT OUT.npz       train with checkpoints; prints each step done
    python workflow_worker.py resume CKPT OUT.npz    continue from CKPT to the end, save the weights

The network has every kind of state a resume must restore: BatchNorm's running statistics,
dropout's counters, Adam's moments, a plateau-reduced rate and early stopping's best weights.
"""
import json
import sys

import numpy as np

import densenn as dn

EPOCHS = 6


def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1200, 24)).astype(np.float32)
    y = (x[:, :5] @ rng.normal(size=(5, 4))).argmax(axis=1)
    return x, y


def callbacks(ckpt_dir):
    return [dn.EarlyStopping(monitor="val_loss", patience=EPOCHS), dn.ReduceLROnPlateau(patience=1, min_delta=0.09),
            dn.CSVLogger(f"{ckpt_dir}/log.csv")]


class Steps(dn.Callback):
    """Says on stdout how many steps are done, for the test to kill the process at a point it chose."""

    def on_batch_end(self, run):
        print(run.global_step, flush=True)


def save(net, out):
    weights = {f"{i}.{k}": t for i, layer in enumerate(net.get_weights()) for k, t in enumerate(layer)}
    np.savez(out, history=json.dumps(net.history.history["loss"]), **weights)


def main():
    mode, *paths = sys.argv[1:]
    x, y = data()
    if mode == "resume":
        net = dn.resume(paths[0], x, y, progress=False,
                        callbacks=callbacks(paths[0].rsplit("/", 1)[0]) + [Steps()])
        save(net, paths[1])
        return
    net = dn.Network(24, [dn.Dense(48, "relu", norm="batch"), dn.Dropout(0.3), dn.Dense(4, "softmax")],
                     seed=3, engine="cpu")
    folder = (paths[0] if mode == "run" else paths[0]).rsplit("/", 1)[0]
    extra = {} if mode == "full" else {"checkpoint": paths[0], "checkpoint_every": 3}
    net.fit(x, y, epochs=EPOCHS, batch_size=32, validation_split=0.1, progress=False,
            callbacks=callbacks(folder) + [Steps()], **extra)
    save(net, paths[-1])


if __name__ == "__main__":
    main()
