"""Saving and loading networks: the user-facing functions over densenn.modelfile's format."""
from __future__ import annotations

from densenn.modelfile import (
    FORMAT,
    FORMAT_VERSION,
    READ_VERSIONS,
    _check_path,
    _digest_v1,
    checked,
    load_extra,
    parse,
    read,
    save,
)
from densenn.nn.network import Network
from densenn.training import checkpoint

__all__ = ["save", "load", "read", "load_extra", "FORMAT", "FORMAT_VERSION", "READ_VERSIONS", "_digest_v1"]


def load(path, engine=None, dtype=None) -> Network:
    """The network saved at ``path`` (a model file, or a checkpoint's model), on ``engine``
    (default engine if None) and in its saved dtype unless ``dtype`` is given. DensennError
    naming the file for any defect of it."""
    path = _check_path(path)
    metadata, tensors = parse(path)
    if checkpoint.is_checkpoint(metadata):
        state = checkpoint.from_parsed(path, metadata, tensors)
        net = Network.from_file_parts(state.config, state.model, engine=engine, dtype=dtype)
        net.load_layer_states(state.training["layer_states"])
        return net
    config, tensors, _, _ = checked(path, metadata, tensors)
    return Network.from_file_parts(config, tensors, engine=engine, dtype=dtype)
