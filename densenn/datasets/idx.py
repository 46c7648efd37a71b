"""IDX files (the format MNIST ships in), read with their header checked before any
payload is decompressed."""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from densenn.errors import DensennError, describe

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


#: the largest IDX payload read (4 GiB; MNIST's largest file holds 47 MB): a header claiming
#: more is refused before anything is decompressed
MAX_IDX_BYTES = 1 << 32


def _idx_layout(head: bytes, source: str) -> tuple[tuple, np.dtype, int, int]:
    """(dims, dtype, header length, total length) from the start of IDX bytes.

    ``head`` must hold at least the magic; DensennError (naming ``source``) for a bad magic
    or type, a truncated header, or a payload over MAX_IDX_BYTES."""
    if len(head) < 4:
        raise DensennError(f"{source} is a truncated IDX file: {len(head)} bytes, expected at least a 4-byte magic")
    if head[0] != 0 or head[1] != 0:
        raise DensennError(f"{source} is not an IDX file: magic {head[:4].hex(' ')}, expected 00 00 <type> <ndim>")
    if head[2] not in _IDX_TYPES:
        known = ", ".join(f"0x{t:02X}" for t in _IDX_TYPES)
        raise DensennError(f"{source} has unknown IDX type code 0x{head[2]:02X}, expected one of {known}")
    ndim = head[3]
    if ndim == 0:
        raise DensennError(f"{source} declares 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DensennError(f"{source} is a truncated IDX file: {len(head)} bytes, but a header with "
                           f"{ndim} dimensions needs {header}")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[head[2]])
    payload = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if payload > MAX_IDX_BYTES:
        raise DensennError(f"{source} declares shape {dims} ({dtype.name}): {payload:,} bytes, larger than "
                           f"the {MAX_IDX_BYTES:,} an IDX file may hold here")
    return dims, dtype, header, header + payload


def _read_bytes(path: Path, source: str) -> bytes:
    """The file's content, gunzipped when it is gzip-compressed (recognised by its magic),
    read no further than its IDX header says it holds (plus one byte, to tell a file that is
    too long): a small gzip that expands to gigabytes is never expanded."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            with (gzip.GzipFile(fileobj=raw) if compressed else raw) as f:
                head = f.read(4)
                if len(head) == 4:
                    head += f.read(4 * head[3])
                    _, _, header, total = _idx_layout(head, source)
                    head += f.read(total - header + 1)
                return head
    except (OSError, EOFError, zlib.error) as exc:
        raise DensennError(f"cannot read IDX file {str(path)!r}: {exc}") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array held in IDX-format bytes; ``source`` names them in error messages.

    Layout: magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
    dimensions, then the data, big-endian, row-major. Types: 0x08 uint8,
    0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. The result
    is a writable array in native byte order. Payloads over MAX_IDX_BYTES are refused.
    """
    dims, dtype, header, expected = _idx_layout(data, source)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise DensennError(f"{source} is {what}: {len(data)} bytes, but its header (shape {dims}, {dtype.name}) "
                           f"needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or raw; errors name the file."""
    if not isinstance(path, (str, os.PathLike)):
        raise DensennError(f"path must be a file path, got {describe(path)}")
    path = Path(path)
    source = f"IDX file {str(path)!r}"
    return parse_idx(_read_bytes(path, source), source)
