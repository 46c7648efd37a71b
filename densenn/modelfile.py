"""The model file: one safetensors file, written and read (densenn.io builds networks from it).

The file is a standard safetensors file (any safetensors reader opens it): an 8-byte
little-endian header length, a JSON header, the tensor data. Its tensors are
``layers.{i}.w`` of shape ``(units_i, fan_in_i)`` and ``layers.{i}.b`` of shape
``(units_i,)`` (float32/float64, as trained; ``fan_in_0 = n_in``), and nothing else.
Its string metadata (the header's ``__metadata__``) holds:

* ``format``: ``"densenn"``; ``format_version``: ``"2"`` (``"1"`` is still read);
* ``config``: the architecture as JSON, ``{"n_in", "layers": [{"units", "activation",
  "init"}, ...], "dtype", "seed"}``;
* ``extra``: a JSON object the caller wants kept (e.g. an input standardiser);
* ``sha256``: the checksum, so an edited or corrupted file is refused, not loaded.

Version 2's checksum covers everything the file means: SHA-256 of an 8-byte
little-endian length L, then L bytes of canonical JSON (sorted keys, no spaces,
ASCII) of ``{"format", "format_version", "config", "extra", "tensors": [[name, dtype,
shape], ...]}`` (``config`` and ``extra`` as the strings stored, tensors sorted by
name, dtypes as NumPy names), then every tensor's little-endian bytes in that order.
Version 1's covered only the tensors (name, dtype and bytes of each, by name).

Reading parses the whole file from one read of its bytes, so a save replacing it
meanwhile gives the old file or the new one, never a mix; the config is checked
completely, and against the tensors, before anything is built from it. Every
defect is one DensennError naming the file. Writing goes through
:func:`densenn.files.write_bytes`: the file appears whole under its name, or not at all.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import stat

import numpy as np
from safetensors.numpy import save as st_save

from densenn.errors import DensennError, check_choice, check_nonnegative_int, check_positive_int, describe
from densenn.files import write_bytes
from densenn.nn.activation import ACTIVATIONS, Activation
from densenn.nn.activation_layer import ActivationLayer
from densenn.nn.dense import Dense
from densenn.nn.init import INITIALIZERS
from densenn.nn.layer import expand_layers, layer_type

FORMAT = "densenn"
FORMAT_VERSION = 2
READ_VERSIONS = ("1", "2")
_MAX_HEADER = 100_000_000       # safetensors' own limit on the header's length
_DTYPES = ("float32", "float64")


# -- paths, checksums, JSON -------------------------------------------------------------------
def _check_path(path) -> str:
    """``path`` as a str; DensennError naming the argument unless it is a non-empty file path."""
    try:
        text = os.fspath(path)
    except TypeError:
        text = None
    if not isinstance(text, str) or not text or "\0" in text:
        raise DensennError(f"path must be a file path (a non-empty str or os.PathLike), got {describe(path)}")
    return text


def _digest_v1(tensors: dict[str, np.ndarray]) -> str:
    """Version 1's checksum: the tensors only (see the module docstring)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(str(tensors[name].dtype).encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def _digest_v2(config_json: str, extra_json: str, tensors: dict[str, np.ndarray], fmt: str = FORMAT,
               version: str = "2") -> str:
    """Version 2's checksum: everything the file means (see the module docstring). A
    checkpoint (densenn.training.checkpoint) uses it with its own format name and version."""
    names = sorted(tensors)
    manifest = {"format": fmt, "format_version": version, "config": config_json, "extra": extra_json,
                "tensors": [[n, tensors[n].dtype.name, list(tensors[n].shape)] for n in names]}
    head = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    h = hashlib.sha256(len(head).to_bytes(8, "little") + head)
    for n in names:
        h.update(np.ascontiguousarray(tensors[n], dtype=tensors[n].dtype.newbyteorder("<")).data)
    return h.hexdigest()


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _json(text: str):
    """Strict JSON: no NaN/Infinity; ValueError for anything unreadable, however deep."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


# -- saving ----------------------------------------------------------------------------------
def save(net, path, extra: dict | None = None) -> str:
    """Write ``net`` (architecture + weights) and ``extra`` (a JSON-serialisable dict) to
    ``path`` atomically, replacing any file there; returns the path."""
    path = _check_path(path)
    if not (callable(getattr(net, "tensors", None)) and callable(getattr(net, "config", None))):
        raise DensennError(f"net must be a densenn.Network, got {describe(net)}")
    if extra is not None and not isinstance(extra, dict):
        raise DensennError(f"extra must be a dict (a JSON object) or None, got {describe(extra)}")
    try:
        extra_json = json.dumps(extra or {}, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DensennError(f"extra must be JSON-serialisable (finite numbers only): {exc}") from None
    tensors = {name: np.ascontiguousarray(t) for name, t in net.tensors().items()}
    bad = [name for name, t in tensors.items() if not np.isfinite(t).all()]
    if bad:     # such a file would be refused by load: say so now, while the caller can act
        raise DensennError(f"the network's weights hold NaN or infinite values ({', '.join(bad)}); "
                           f"not saved to {path!r}")
    config_json = json.dumps(net.config())
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": config_json,
                "extra": extra_json, "sha256": _digest_v2(config_json, extra_json, tensors)}
    return write_bytes(path, st_save(tensors, metadata=metadata), "path")


# -- reading ---------------------------------------------------------------------------------
def _read_bytes(path: str, what: str = "model file") -> bytes:
    """The whole file at ``path``; DensennError saying why not (missing, a folder, unreadable)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise DensennError(f"{what} {path!r} is a folder, not a {what}")
        if not stat.S_ISREG(mode):
            raise DensennError(f"{what} {path!r} is not a regular file")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DensennError(f"{what} {path!r} does not exist") from None
    except OSError as exc:
        raise DensennError(f"{what} {path!r} cannot be read: {exc.strerror or exc}") from None


def _metadata(raw: bytes) -> dict[str, str]:
    """The string metadata in the safetensors header of ``raw``; ValueError if unreadable."""
    if len(raw) < 8:
        raise ValueError(f"{len(raw)} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ValueError(f"its header length {n} exceeds the {len(raw) - 8} bytes after it")
    if n > _MAX_HEADER:
        raise ValueError(f"its header length {n} is over safetensors' limit of {_MAX_HEADER}")
    header = _json(raw[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("its metadata is not a map of strings")
    return metadata


def _check_keys(name: str, value, required: tuple, optional: tuple = ()) -> None:
    """DensennError unless ``value`` is a dict with the ``required`` keys and no others but ``optional``."""
    if not isinstance(value, dict):
        raise DensennError(f"{name} must be a JSON object, got {describe(value)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise DensennError(f"{name} is incomplete: it has no {', '.join(missing)}")
    unexpected = sorted(set(value) - set(required) - set(optional))
    if unexpected:
        raise DensennError(f"{name} has unexpected key(s): {', '.join(unexpected)}")


def _activation(name: str, cfg) -> Activation:
    """The activation a layer config names: a name, or {"name", "param"} where the class takes one."""
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    _check_keys(name, cfg, ("name",), ("param",))
    kind = ACTIVATIONS[check_choice(name, cfg["name"], ACTIVATIONS)]
    if "param" not in cfg:
        return kind()
    param = cfg["param"]
    if not inspect.signature(kind).parameters:
        raise DensennError(f"{name} {cfg['name']!r} takes no parameter, got param {describe(param)}")
    # float() first: the activations' own checks raise TypeError for an int beyond float's range
    if isinstance(param, (int, float)) and not isinstance(param, bool) and abs(param) < 1e300:
        return kind(float(param))  # type: ignore[call-arg]
    raise DensennError(f"{name}.param must be a finite number, got {describe(param)}")


def _specs(config) -> list:
    """The layer specs of a config parsed from a file; DensennError naming the field at fault."""
    _check_keys("config", config, ("n_in", "layers", "dtype"), ("seed",))
    check_positive_int("config.n_in", config["n_in"])
    check_choice("config.dtype", config["dtype"], _DTYPES)
    check_nonnegative_int("config.seed", config.get("seed", 0))
    layers = config["layers"]
    if not isinstance(layers, list) or not layers:
        raise DensennError(f"config.layers must be a non-empty list, got {describe(layers)}")
    specs: list = []
    for i, cfg in enumerate(layers):
        name = f"config.layers[{i}]"
        if not isinstance(cfg, dict):
            raise DensennError(f"{name} must be a JSON object, got {describe(cfg)}")
        kind = layer_type(cfg, name)
        required, optional = kind.config_keys
        _check_keys(name, cfg, required, optional + ("type",))
        if kind is Dense:
            units = check_positive_int(f"{name}.units", cfg["units"])
            init = cfg.get("init")
            if init is not None:
                check_choice(f"{name}.init", init, INITIALIZERS)
            specs.append(Dense(units, _activation(f"{name}.activation", cfg["activation"]), init))
        elif kind is ActivationLayer:
            specs.append(ActivationLayer(_activation(f"{name}.activation", cfg["activation"])))
        else:
            try:     # the spec checks its own values, and names the argument
                specs.append(kind.from_config(cfg))
            except (DensennError, TypeError) as exc:
                raise DensennError(f"{name}: {exc}") from None
    try:
        expand_layers(specs)       # where each may stand
    except DensennError as exc:
        raise DensennError(f"config.layers: {exc}") from None
    return specs


def _check_tensors(config: dict, specs: list, tensors: dict[str, np.ndarray]) -> None:
    """DensennError unless ``tensors`` are exactly the weights ``config`` describes, finite."""
    expected: dict[str, tuple] = {}
    fan_in = config["n_in"]
    for i, spec in enumerate(specs):
        for name, shape in spec.tensor_shapes(fan_in).items():
            expected[f"layers.{i}.{name}"] = shape
        fan_in = spec.n_out(fan_in)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise DensennError(f"the tensors are incomplete: {', '.join(missing)} missing")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise DensennError(f"unexpected tensor(s) {', '.join(unexpected)}")
    for name, shape in expected.items():
        t = tensors[name]
        if t.dtype != np.dtype(config["dtype"]):
            raise DensennError(f"tensor {name} has dtype {t.dtype}, the config's dtype is {config['dtype']}")
        if t.shape != shape:
            raise DensennError(f"tensor {name} has shape {t.shape}, the config needs {shape}")
        if not np.isfinite(t).all():
            raise DensennError(f"tensor {name} holds NaN or infinite values")


def parse(path, what: str = "model file") -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(string metadata, tensors) of the safetensors file at ``path``, from one read of its
    bytes; nothing is checked beyond their being readable."""
    from safetensors.numpy import load as st_load

    raw = _read_bytes(path, what)     # the one read: the header and the tensors come from these bytes
    try:
        return _metadata(raw), st_load(raw)
    except Exception as exc:    # whatever safetensors or the header parse meets in broken bytes
        raise DensennError(f"{what} {path!r} is not a readable densenn/safetensors file "
                           f"(truncated or corrupted?): {exc}") from None


def _read(path) -> tuple[dict, dict[str, np.ndarray], dict, list]:
    """(config, tensors, extra, specs) of the file at ``path``, all checked."""
    path = _check_path(path)
    metadata, tensors = parse(path)
    return checked(path, metadata, tensors)


def checked(path: str, metadata: dict, tensors: dict) -> tuple[dict, dict[str, np.ndarray], dict, list]:
    """(config, tensors, extra, specs) of a model file ``parse`` read, all checked."""
    if metadata.get("format") != FORMAT:
        raise DensennError(f"model file {path!r} was not written by densenn (format {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version not in READ_VERSIONS:
        raise DensennError(f"model file {path!r} has format version {version!r}; this densenn reads "
                           f"versions {' and '.join(READ_VERSIONS)}")
    if "config" not in metadata or (version != "1" and "extra" not in metadata):
        raise DensennError(f"model file {path!r} is incomplete: its metadata lacks config or extra")
    config_json, extra_json = metadata["config"], metadata.get("extra", "{}")
    digest = _digest_v1(tensors) if version == "1" else _digest_v2(config_json, extra_json, tensors)
    if metadata.get("sha256") != digest:
        raise DensennError(f"model file {path!r} is corrupted or edited: its contents do not match "
                           f"their checksum")
    try:
        config = _json(config_json)
    except ValueError as exc:
        raise DensennError(f"model file {path!r} has an unreadable architecture (config): {exc}") from None
    try:
        extra = _json(extra_json)
    except ValueError as exc:
        raise DensennError(f"model file {path!r} has an unreadable extra: {exc}") from None
    if not isinstance(extra, dict):
        raise DensennError(f"model file {path!r}: its extra must be a JSON object, got {describe(extra)}")
    specs = checked_specs(config, tensors, f"model file {path!r}")
    return config, tensors, extra, specs


def checked_specs(config, tensors: dict[str, np.ndarray], what: str) -> list:
    """The layer specs of a config read from a file, checked completely and against the
    tensors (exactly the weights it describes); DensennError naming ``what`` otherwise."""
    try:
        specs = _specs(config)
        _check_tensors(config, specs, tensors)
    except DensennError as exc:
        raise DensennError(f"{what} describes an invalid network: {exc}") from None
    return specs


def read(path) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(config, tensors, extra) from a densenn file, verified; DensennError if anything is off."""
    return _read(path)[:3]


def load_extra(path) -> dict:
    """The ``extra`` dict saved with a model (e.g. the input standardiser)."""
    return _read(path)[2]
