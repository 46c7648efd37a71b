"""Operations declared once, run by every engine.

An activation, a cost, an optimizer or a metric declares its arithmetic here, as data;
the engines know only these four kinds, never which activation or optimizer they run:

``Map``
    elementwise: a body (see :mod:`densenn.kernels.expr`) over one element of each
    array. The GPU engines compile it to C, the CPU engine to a Numba loop, or run its
    ``numpy`` form (for ``cpu="numpy"``, or without Numba).
``RowMap``
    row-wise (softmax): a C body over one row for the GPU engines, a Numba function
    over rows for the CPU, and a ``numpy`` form.
``Sum``
    a reduction into ``acc[0]``: an elementwise body (``term = ...``) or, with
    ``rows=True``, a C body per row; the CPU engine runs the ``numpy`` form.

Arrays are named in ``arrays`` with a role after a colon: none (one element per element,
read; written if named in ``writes``), ``col`` (a vector indexed by the column, like a
bias), ``index`` (integers, one per row: class labels), ``row`` (a vector of one value per
row, read, broadcast along the row's columns and split into row blocks with the arrays:
per-sample weights), ``whole`` (passed whole to a Numba form, never split into row blocks:
accumulators), ``scalar`` (a one-element array of the engine whose value every element
reads, like a scalar that stays on the engine: a factor computed by an earlier kernel,
with no host round trip; read only, never split into row blocks).

``numpy(engine, arrays, scalars, work)`` forms write only into the arrays they get
(no allocation: a training step stays allocation-free); ``work`` is the caller's
scratch, split into row blocks with the arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from densenn.errors import DensennError
from densenn.kernels import expr
from densenn.kernels.numpy_eval import numpy_form

#: every declared operation, in order of declaration (the NVRTC test compiles them all)
DECLARED: list = []

ROLES = ("", "col", "index", "row", "whole", "scalar")


def _names(spec: str) -> tuple[str, ...]:
    return tuple(spec.split()) if isinstance(spec, str) else tuple(spec)


def _roles(spec) -> tuple[tuple[str, str], ...]:
    out = []
    for item in _names(spec):
        name, _, role = item.partition(":")
        if role not in ROLES:
            raise DensennError(f"array {name!r}: role must be one of {', '.join(r or '(none)' for r in ROLES)}, "
                               f"got {role!r}")
        out.append((name, role))
    return tuple(out)


@dataclass(eq=False)
class _Op:
    name: str
    # given as "z b:col a" (or a tuple of names); kept as tuples
    arrays: Any = ()
    writes: Any = ()
    scalars: Any = ()
    numpy: Callable | None = None
    #: the arrays' names, in order (kept: the engines ask on every call)
    array_names: tuple = field(init=False, repr=False, default=())
    #: per array, whether an engine may split it into row blocks (not a ``col``, ``whole`` or ``scalar`` one)
    splits: tuple = field(init=False, repr=False, default=())
    #: the position of the first written array, and whether any array is by column / whole
    first_written: int = field(init=False, repr=False, default=0)
    has_cols: bool = field(init=False, repr=False, default=False)
    has_whole: bool = field(init=False, repr=False, default=False)
    #: whether any array is a ``row`` vector (the CPU engine then loops rows × columns)
    has_rows: bool = field(init=False, repr=False, default=False)
    #: whether any array is a one-element ``scalar`` one (passed whole to every row block)
    has_scalars: bool = field(init=False, repr=False, default=False)

    def __post_init__(self):
        self.arrays = _roles(self.arrays)
        self.array_names = tuple([name for name, _ in self.arrays])
        self.splits = tuple([role not in ("col", "whole", "scalar") for _, role in self.arrays])
        roles = [role for _, role in self.arrays]
        self.has_cols, self.has_whole = "col" in roles, "whole" in roles
        self.has_rows = "row" in roles
        self.has_scalars = "scalar" in roles
        self.writes = _names(self.writes)
        self.scalars = _names(self.scalars)
        names = self.array_names
        for w in self.writes:
            if w not in names:
                raise DensennError(f"operation {self.name!r}: writes {w!r}, which is not one of its arrays")
            if dict(self.arrays)[w] == "row":
                # every element of a row reads its value: a write would race between them
                raise DensennError(f"operation {self.name!r}: writes {w!r}, a row array (those are read only)")
            if dict(self.arrays)[w] == "scalar":
                # every element reads it: a write would race between them
                raise DensennError(f"operation {self.name!r}: writes {w!r}, a scalar array (those are read only)")
        self.first_written = names.index(self.writes[0]) if self.writes else 0
        DECLARED.append(self)

    def role(self, name: str) -> str:
        return dict(self.arrays)[name]

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


@dataclass(eq=False)
class Map(_Op):
    """An elementwise operation (see the module docstring).

    ``cpu`` says which CPU form is the faster one: ``"numba"`` (the loop made from the
    body) or ``"numpy"`` (NumPy's SIMD functions beat a scalar loop calling libm).
    ``cpu_prepass``/``cpu_body`` split the CPU's Numba form in two: a NumPy pass in
    place on the first written array, then a loop of ``cpu_body`` (tanh's delta: NumPy's
    SIMD tanh, then the arithmetic around it in one pass instead of NumPy's three).
    ``cpu_blocks=False`` keeps the CPU from splitting the NumPy form into row blocks (a
    form that calls the BLAS, which has threads of its own)."""

    body: str = ""
    cpu: str = "numba"
    cpu_blocks: bool = True
    cpu_prepass: Callable | None = None
    cpu_body: str | None = None
    parsed: expr.Body = field(init=False, repr=False)
    parsed_cpu: expr.Body = field(init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        known = set(self.array_names) | set(self.scalars)
        what = f"operation {self.name!r}"
        self.parsed = expr.parse(self.body, known, what)
        self.parsed_cpu = self.parsed if self.cpu_body is None else expr.parse(self.cpu_body, known, what)
        if self.cpu not in ("numba", "numpy"):
            raise DensennError(f"{what}: cpu must be 'numba' or 'numpy', got {self.cpu!r}")
        if self.numpy is None:      # the body evaluated with NumPy temporaries (see numpy_eval)
            self.numpy = numpy_form(" ".join(f"{n}:{r}" if r else n for n, r in self.arrays), " ".join(self.scalars),
                                    self.body)

    @property
    def elements(self) -> tuple[str, ...]:
        """The arrays read element by element (not per column)."""
        return tuple([name for name, role in self.arrays if role == ""])


@dataclass(eq=False)
class RowMap(_Op):
    """A row-wise operation: ``c_body`` works on one row through pointers named after the
    arrays (``z[j]`` for j < ``cols``; a ``col`` array is the whole vector); ``numba`` is
    a Python function ``f(*arrays, *scalars, db)`` over all rows it is given (Numba
    compiles it; ``db`` gets the column sums of the first written array when it is as wide
    as a row, else it is empty). Either may be None: an engine without that form says
    so in ``can``. A ``scalar`` array is its value in ``c_body`` and the one-element array
    in the Numba form."""

    c_body: str | None = None
    numba: Callable | None = None
    #: whether the Numba form may reorder its sums (SIMD reductions over a row; NaN and inf
    #: are still honoured): for row statistics, whose order does not matter beyond rounding
    reassociate: bool = False


@dataclass(eq=False)
class Sum(_Op):
    """``acc[0] += Σ term``: ``body`` an elementwise body that assigns ``term``, or with
    ``rows=True`` a C body per row (as in RowMap) that assigns ``term``."""

    body: str = ""
    rows: bool = False
    parsed: Any = field(init=False, repr=False, default=None)

    def __post_init__(self):
        super().__post_init__()
        if not self.rows:
            self.parsed = expr.parse(self.body, set(self.array_names) | set(self.scalars),
                                     f"operation {self.name!r}")
            if "term" not in self.parsed.assigned:
                raise DensennError(f"operation {self.name!r}: a Sum's body must assign 'term'")
