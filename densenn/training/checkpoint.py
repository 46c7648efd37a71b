"""Checkpoints: all a fit needs to go on exactly where it stopped.

A checkpoint is a safetensors file like a model file (densenn.modelfile), with format
``"densenn-checkpoint"``, version ``"1"``. Its tensors are the model's (``layers.{i}.*``,
running statistics included) plus

* ``optimizer.{i}.{k}``: slot k (momentum; Adam's m, v) of parameter i;
* ``run.acc``: the loss and hit sums of the epoch in progress (zero at an epoch's end);
* ``callbacks.{j}.{name}``: arrays a callback keeps (EarlyStopping's best weights).

Its metadata holds ``config`` (the architecture, as in a model file) and ``extra``: the
training state as JSON: the epoch and step reached, the shuffling generator's state at the
start of that epoch, the optimizer's config (its rate as a plateau left it) and step count,
the layers' states (dropout's step counters), the history, each callback's type, config and
state, the fit's arguments, and a fingerprint of the training data. The checksum covers
all of it, as a model file's does; a checkpoint is written through
:func:`densenn.files.write_bytes`, so a crash mid-write leaves the previous one whole.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import save as st_save

from densenn.errors import DensennError, describe
from densenn.files import write_bytes
from densenn.modelfile import _check_path, _digest_v2, checked_specs, parse

FORMAT = "densenn-checkpoint"
VERSION = "1"
#: how many evenly spaced rows of x the fingerprint hashes whole (all of y and the weights are)
FINGERPRINT_ROWS = 4096


def fingerprint(x: np.ndarray, targets: np.ndarray, weights: np.ndarray | None) -> str:
    """A digest that tells one training set from another: shapes, dtypes, every column's sum
    of x, evenly spaced rows of x, and all of the targets and weights. Hashing every byte
    of a large x would cost more than a checkpoint; a different data set differs in these."""
    h = hashlib.sha256()
    h.update(json.dumps([list(x.shape), x.dtype.name, list(targets.shape)]).encode())
    h.update(np.ascontiguousarray(x.sum(axis=0, dtype=np.float64)).data)
    rows = np.unique(np.linspace(0, x.shape[0] - 1, min(FINGERPRINT_ROWS, x.shape[0])).astype(np.int64))
    h.update(np.ascontiguousarray(x[rows]).data)
    h.update(np.ascontiguousarray(targets).data)
    if weights is not None:
        h.update(np.ascontiguousarray(weights, dtype=np.float64).data)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """A checkpoint read back and checked: the architecture, the model's tensors, the
    training state (JSON) and the other tensors (optimizer, run, callbacks) by name."""

    path: str
    config: dict
    model: dict[str, np.ndarray]
    training: dict
    arrays: dict[str, np.ndarray]

    def prefixed(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays named ``prefix.*``, by the rest of their name."""
        return {k[len(prefix) + 1:]: v for k, v in self.arrays.items() if k.startswith(prefix + ".")}


def write(path, run) -> str:
    """Write the state of ``run`` (a densenn.training.fit.Run at a step boundary) to ``path``
    atomically; returns the path."""
    net, opt, e = run.net, run.optimizer, run.net.engine
    tensors = {name: np.ascontiguousarray(t) for name, t in net.tensors().items()}
    for i, bufs in enumerate(opt.state):
        for k, buf in enumerate(bufs):
            tensors[f"optimizer.{i}.{k}"] = np.ascontiguousarray(e.to_host(buf))
    tensors["run.acc"] = np.ascontiguousarray(e.to_host(run.tn.acc))
    callbacks = []
    for j, cb in enumerate(run.callbacks):
        state, arrays = cb.state()
        callbacks.append({"type": type(cb).__name__, "config": cb.config(), "state": state})
        for name, a in arrays.items():
            tensors[f"callbacks.{j}.{name}"] = np.ascontiguousarray(a)
    training = {"epoch": run.epoch, "step": run.step, "global_step": run.global_step, "stopped": run.stop_training,
                "rng": run.epoch_rng_state, "engine": e.name,
                "optimizer": {"config": opt.config(), "t": opt.t},
                "layer_states": net.layer_states(), "history": run.history.history, "callbacks": callbacks,
                "fit": run.fit_args, "fingerprint": run.fingerprint, "extra": run.extra}
    config_json = json.dumps(net.config())
    training_json = json.dumps(training)
    metadata = {"format": FORMAT, "format_version": VERSION, "config": config_json, "extra": training_json,
                "sha256": _digest_v2(config_json, training_json, tensors, FORMAT, VERSION)}
    return write_bytes(path, st_save(tensors, metadata=metadata), "checkpoint")


def is_checkpoint(metadata: dict) -> bool:
    return metadata.get("format") == FORMAT


def read(path) -> Checkpoint:
    """The checkpoint at ``path``, verified; DensennError naming the file for any defect."""
    path = _check_path(path)
    metadata, tensors = parse(path, "checkpoint")
    return from_parsed(path, metadata, tensors)


def from_parsed(path: str, metadata: dict, tensors: dict) -> Checkpoint:
    """The Checkpoint of a file ``modelfile.parse`` read, verified."""
    what = f"checkpoint {path!r}"
    if not is_checkpoint(metadata):
        kind = "a model file, not a checkpoint" if metadata.get("format") == "densenn" else \
            f"not a densenn checkpoint (format {metadata.get('format')!r})"
        raise DensennError(f"{what} is {kind}")
    if metadata.get("format_version") != VERSION:
        raise DensennError(f"{what} has format version {metadata.get('format_version')!r}; this densenn reads "
                           f"version {VERSION}")
    if "config" not in metadata or "extra" not in metadata:
        raise DensennError(f"{what} is incomplete: its metadata lacks config or the training state")
    if metadata.get("sha256") != _digest_v2(metadata["config"], metadata["extra"], tensors, FORMAT, VERSION):
        raise DensennError(f"{what} is corrupted or edited: its contents do not match their checksum")
    try:
        config, training = json.loads(metadata["config"]), json.loads(metadata["extra"])
    except ValueError as exc:
        raise DensennError(f"{what} has unreadable JSON: {exc}") from None
    if not isinstance(training, dict) or not all(k in training for k in _TRAINING_KEYS):
        raise DensennError(f"{what} has an incomplete training state: {describe(training)}")
    model = {k: v for k, v in tensors.items() if k.startswith("layers.")}
    checked_specs(config, model, what)
    arrays = {k: v for k, v in tensors.items() if not k.startswith("layers.")}
    return Checkpoint(path, config, model, training, arrays)


_TRAINING_KEYS = ("epoch", "step", "global_step", "stopped", "rng", "engine", "optimizer", "layer_states",
                  "history", "callbacks", "fit", "fingerprint", "extra")
