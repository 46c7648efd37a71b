"""Saving and loading networks: the user-facing functions over densenn.modelfile's format."""
from __future__ import annotations

from densenn.modelfile import FORMAT, FORMAT_VERSION, READ_VERSIONS, _digest_v1, load_extra, read, save
from densenn.nn.network import Network

__all__ = ["save", "load", "read", "load_extra", "FORMAT", "FORMAT_VERSION", "READ_VERSIONS", "_digest_v1"]


def load(path, engine=None, dtype=None) -> Network:
    """The network saved at ``path``, on ``engine`` (default engine if None) and in its saved
    dtype unless ``dtype`` is given. DensennError naming the file for any defect of it."""
    config, tensors, _ = read(path)
    return Network.from_file_parts(config, tensors, engine=engine, dtype=dtype)
