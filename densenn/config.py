"""Every ``DENSENN_*`` environment variable, in one table, read and checked in one place.

A variable is read when the setting is asked for (an engine is made, a folder is
chosen), not at import: a program (or a test) that sets it before that sees it. An
argument given in code always wins over the variable. ``densenn info`` and
docs/configuration.md list them (``table()``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from densenn.errors import DensennError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str           # "text", "flag", "positive int", "positive float", "choice"
    default: str
    meaning: str
    choices: tuple = ()


VARIABLES = {v.name: v for v in (
    Variable("DENSENN_ENGINE", "text", "cpu",
             "the engine a Network uses when none is given: cpu, cpu:numpy, cpu:numba, opencl[:P:D], cuda[:N]"),
    Variable("DENSENN_NUMBA", "flag", "1", "0: the CPU engine runs the NumPy forms even where Numba is installed"),
    Variable("DENSENN_BLAS", "choice", "auto", "the CPU engine's GEMM: auto (MKL where it loads), mkl, openblas",
             ("auto", "mkl", "openblas")),
    Variable("DENSENN_THREADS", "positive int", "",
             "row blocks a large CPU elementwise pass is split into (default: every usable core)"),
    Variable("DENSENN_OPENCL_DEVICE", "text", "",
             "the OpenCL device 'P:D' for engine 'opencl' (default: the first GPU)"),
    Variable("DENSENN_TF32", "flag", "0", "1: the CUDA engine's float32 GEMMs use TF32 tensor cores"),
    Variable("DENSENN_CUBLAS_WORKSPACE_MB", "positive float", "32",
             "the cuBLAS workspace for CUDA graph capture, in MiB"),
    Variable("DENSENN_DATA", "text", "~/.cache/densenn", "where datasets are cached (MNIST in its mnist/ folder)"),
)}


def setting(name: str):
    """The value of variable ``name`` now, parsed by its kind; its default when unset or empty
    (None for a positive int with no default). DensennError when it does not parse."""
    var = VARIABLES[name]
    raw = os.environ.get(name, "").strip()
    if not raw:
        raw = var.default
        if not raw:
            return None
    if var.kind == "flag":
        low = raw.lower()
        if low not in _TRUE + _FALSE:
            raise DensennError(f"${name} must be 1 or 0 (also true/false, yes/no, on/off), got {raw!r}")
        return low in _TRUE
    if var.kind == "positive int":
        if not raw.isdigit() or int(raw) == 0:
            raise DensennError(f"${name} must be a positive integer, got {raw!r}")
        return int(raw)
    if var.kind == "positive float":
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise DensennError(f"${name} must be a positive number, got {raw!r}")
        return value
    if var.kind == "choice":
        low = raw.lower()
        if low not in var.choices:
            raise DensennError(f"${name} must be one of {', '.join(var.choices)}, got {raw!r}")
        return low
    return raw


def current() -> dict:
    """{name: raw value} of the variables set in the environment now."""
    return {name: os.environ[name] for name in VARIABLES if name in os.environ}


def table() -> str:
    """The variables as a Markdown table (docs/configuration.md is this)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default or '—'} | {v.meaning} |" for v in VARIABLES.values()]
    return "\n".join(rows)
