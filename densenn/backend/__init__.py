"""Engines, found by name: ``"cpu"`` (``"cpu:numpy"``, ``"cpu:numba"``), ``"opencl"``
(``"opencl:P:D"``), ``"cuda"`` (``"cuda:N"``).

``get_engine(name)`` returns one shared engine per name; ``None`` means the
default engine, which is ``$DENSENN_ENGINE`` or ``"cpu"`` unless
``set_default_engine`` says otherwise. Engines other than the CPU one import
their packages only when asked for, so a missing CuPy or PyOpenCL costs nothing
until it is needed, and then gives an :class:`EngineUnavailable` that says what
to install.
"""
from __future__ import annotations

import importlib
import threading

from densenn.backend.base import Engine, check_dtype
from densenn.backend.cpu import CPUEngine
from densenn.config import setting
from densenn.errors import DensennError, DensennException, EngineUnavailable

#: engine kind -> (module, factory function taking the text after "kind:")
_KINDS = {
    "cpu": ("densenn.backend.cpu", None),
    "opencl": ("densenn.backend.opencl", "create_engine"),
    "cuda": ("densenn.backend.cuda", "create_engine"),
}
ENGINE_KINDS = tuple(_KINDS)

_engines: dict[str, Engine] = {}
_default: str | None = None
_creating = threading.Lock()    # two threads asking for a new engine at once get the same one


def _create(kind: str, arg: str):
    if kind == "cpu":
        if arg not in ("", "numpy", "numba"):
            raise DensennError(f"engine 'cpu' takes 'cpu', 'cpu:numpy' (pure NumPy kernels, SciPy's BLAS) or "
                               f"'cpu:numba' (fused kernels), got 'cpu:{arg}'")
        # "cpu:numpy" is the reference path: NumPy kernels and SciPy's BLAS, nothing optional
        return CPUEngine(fused=None if arg == "" else arg == "numba", blas="openblas" if arg == "numpy" else None)
    module_name, factory = _KINDS[kind]
    try:
        module = importlib.import_module(module_name)
    except EngineUnavailable:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("densenn"):
            raise EngineUnavailable(f"engine {kind!r} is not part of this densenn build") from None
        raise EngineUnavailable(
            f"engine {kind!r} needs the Python package {exc.name!r}: "
            f"pip install 'densenn[{kind}]'") from None
    return getattr(module, str(factory))(arg)


def get_engine(name=None) -> Engine:
    """The engine called ``name`` (an Engine passes through; None → the default)."""
    if name is None:
        name = default_engine_name()
    if not isinstance(name, str):
        if isinstance(name, Engine):
            return name
        raise DensennError(f"engine must be a name like 'cpu', 'opencl' or 'cuda', got {name!r}")
    key = name.strip().lower()
    kind, _, arg = key.partition(":")
    if kind not in _KINDS:
        raise DensennError(f"unknown engine {name!r}; expected one of: {', '.join(ENGINE_KINDS)} "
                           "(optionally 'opencl:P:D' or 'cuda:N')")
    with _creating:
        if key not in _engines:
            _engines[key] = _create(kind, arg)
        return _engines[key]


def default_engine_name() -> str:
    return _default or setting("DENSENN_ENGINE")


def set_default_engine(name: str) -> Engine:
    """Make ``name`` the engine used when none is given; returns that engine."""
    global _default
    engine = get_engine(name)
    _default = name
    return engine


def available_engines() -> dict[str, str | None]:
    """Each engine kind → None when it works here, else the reason it does not."""
    status: dict[str, str | None] = {}
    for kind in ENGINE_KINDS:
        try:
            get_engine(kind)
            status[kind] = None
        except DensennException as exc:
            status[kind] = str(exc)
        except Exception as exc:  # a broken driver must not break `densenn info`
            status[kind] = f"{type(exc).__name__}: {exc}"
    return status


__all__ = ["Engine", "CPUEngine", "get_engine", "set_default_engine", "default_engine_name",
           "available_engines", "check_dtype", "ENGINE_KINDS"]
