"""Saving and loading networks: one safetensors file.

The file is a standard safetensors file: tensors ``layers.{i}.w`` and
``layers.{i}.b`` (float32/float64, as trained), and in its string metadata
``format`` (``"densenn"``), ``format_version``, ``config`` (the architecture as
JSON), ``extra`` (JSON the caller wants kept, e.g. a standardiser) and ``sha256``
(a digest of the tensor bytes, so a corrupted payload is refused, not loaded).
Any safetensors reader opens it; densenn's loader checks all of the above.

Writing goes to a temporary file in the same folder, then ``os.replace``: a
crash never leaves a half-written model under the final name.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from densenn.errors import DensennError

FORMAT = "densenn"
FORMAT_VERSION = 1


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(str(tensors[name].dtype).encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def save(net, path, extra: dict | None = None) -> str:
    """Write ``net`` (architecture + weights) to ``path`` atomically; returns the path."""
    from safetensors.numpy import save as st_save

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DensennError(f"path {path!r}: folder {folder!r} does not exist")
    tensors = {}
    for i, (w, b) in enumerate(net.get_weights()):
        tensors[f"layers.{i}.w"] = np.ascontiguousarray(w)
        tensors[f"layers.{i}.b"] = np.ascontiguousarray(b)
    try:
        extra_json = json.dumps(extra or {})
    except TypeError as exc:
        raise DensennError(f"extra must be JSON-serialisable: {exc}") from None
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(net.config()), "extra": extra_json, "sha256": _digest(tensors)}
    data = st_save(tensors, metadata=metadata)
    fd, tmp = tempfile.mkstemp(prefix=".densenn-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read(path) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(config, tensors, extra) from a densenn file, verified; DensennError if anything is off."""
    from safetensors import safe_open
    from safetensors.numpy import load as st_load

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DensennError(f"model file {path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        tensors = st_load(raw)
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise DensennError(f"model file {path!r} is not a readable densenn/safetensors file "
                           f"(truncated or corrupted?): {exc}") from None
    if metadata.get("format") != FORMAT:
        raise DensennError(f"model file {path!r} was not written by densenn (format {metadata.get('format')!r})")
    version = metadata.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise DensennError(f"model file {path!r} has format version {version}; this densenn reads "
                           f"version {FORMAT_VERSION}")
    if metadata.get("sha256") != _digest(tensors):
        raise DensennError(f"model file {path!r} is corrupted: its weights do not match their checksum")
    try:
        config = json.loads(metadata["config"])
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, ValueError) as exc:
        raise DensennError(f"model file {path!r} has an unreadable architecture: {exc}") from None
    return config, tensors, extra


def load(path, engine=None, dtype=None):
    """The network saved at ``path``, on ``engine`` (default engine if None) and in its saved
    dtype unless ``dtype`` is given."""
    from densenn.network import Dense, Network

    config, tensors, _ = read(path)
    try:
        specs = [Dense.from_config(c) for c in config["layers"]]
        net = Network(config["n_in"], specs, engine=engine, dtype=dtype or config["dtype"],
                      seed=config.get("seed", 0))
        weights = [(tensors[f"layers.{i}.w"], tensors[f"layers.{i}.b"]) for i in range(len(specs))]
    except KeyError as exc:
        raise DensennError(f"model file {path!r} is incomplete: missing {exc}") from None
    except DensennError as exc:
        raise DensennError(f"model file {path!r} describes an invalid network: {exc}") from None
    net.set_weights(weights)
    return net


def load_extra(path) -> dict:
    """The ``extra`` dict saved with a model (e.g. the input standardiser)."""
    return read(path)[2]
