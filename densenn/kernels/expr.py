"""The small language operations are declared in, and its two translations.

A body is a few lines ``name = expression`` in Python's expression syntax: arithmetic,
comparisons, ``and``/``or``/``not``, ``x if c else y``, numbers, and the functions in
``FUNCTIONS``. Names are the operation's arrays (one element of each), its scalars, and
locals assigned earlier in the body. From one body come:

* C for the GPU engines (``to_c``): numbers typed as ``(T)``, locals declared ``T``,
  the conditional expression as ``?:``;
* Python for the CPU engine's Numba kernels (``to_python``): numbers wrapped as ``_T(·)``
  (``_T`` is the array's NumPy scalar type, so float32 arithmetic stays float32: a bare
  ``0.5`` would promote it to float64 and halve the SIMD width), functions from NumPy.

Comparisons are written so NaN propagates where the declaration wants it: ``0 if z < 0
else z`` keeps a NaN ``z`` in both languages, as NumPy's ``maximum`` does.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from densenn.errors import DensennError

#: name in a body -> (C function, Python function in a Numba kernel's namespace)
FUNCTIONS = {
    "sqrt": ("sqrt", "np.sqrt"), "exp": ("exp", "np.exp"), "log": ("log", "np.log"),
    "tanh": ("tanh", "np.tanh"), "log1p": ("log1p", "np.log1p"), "expm1": ("expm1", "np.expm1"),
    "abs": ("fabs", "np.abs"), "max": ("fmax", "np.fmax"), "min": ("fmin", "np.fmin"),
    "isnan": ("isnan", "np.isnan"), "erf": ("erf", "math.erf"),
}

_C_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_C_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


@dataclass(frozen=True)
class Body:
    """A parsed body: ``(target, expression)`` statements, in order."""

    source: str
    statements: tuple

    @property
    def assigned(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(target for target, _ in self.statements))

    @property
    def read(self) -> set[str]:
        """The names read before (or without) being assigned: the arrays a kernel must load."""
        out: set[str] = set()
        assigned: set[str] = set()
        for target, value in self.statements:
            out |= {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} - assigned
            assigned.add(target)
        return out


def parse(source: str, known: set[str], what: str) -> Body:
    """The body ``source``, checked: every name it reads is in ``known`` or assigned before."""
    try:
        tree = ast.parse(_dedent(source), mode="exec")
    except SyntaxError as exc:
        raise DensennError(f"{what}: body is not valid: {exc.msg} in {exc.text!r}") from None
    statements = []
    names = set(known)
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise DensennError(f"{what}: each line of a body must be 'name = expression', got "
                               f"{ast.unparse(node)!r}")
        _check(node.value, names, what)
        names.add(node.targets[0].id)
        statements.append((node.targets[0].id, node.value))
    return Body(source, tuple(statements))


def _dedent(source: str) -> str:
    lines = [line.strip() for line in source.strip().splitlines()]
    return "\n".join(line for line in lines if line and not line.startswith("#"))


def _check(node, names, what):
    called = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            if not isinstance(sub.func, ast.Name) or sub.func.id not in FUNCTIONS or sub.keywords:
                raise DensennError(f"{what}: unknown function in {ast.unparse(sub)!r}; bodies may call "
                                   f"{', '.join(sorted(FUNCTIONS))}")
        elif isinstance(sub, ast.Name) and id(sub) not in called and sub.id not in names:
            raise DensennError(f"{what}: name {sub.id!r} is neither an argument nor assigned before")
        elif isinstance(sub, ast.Constant) and (isinstance(sub.value, bool) or
                                                not isinstance(sub.value, (int, float))):
            raise DensennError(f"{what}: only numbers may be constants, got {ast.unparse(sub)!r}")
        elif isinstance(sub, _FORBIDDEN) or not isinstance(sub, _ALLOWED):
            raise DensennError(f"{what}: {type(sub).__name__} is not allowed in a body (write x * x for x²)")


_ALLOWED = (ast.expr, ast.operator, ast.cmpop, ast.boolop, ast.unaryop, ast.expr_context)
_FORBIDDEN = (ast.Pow, ast.FloorDiv, ast.Mod, ast.MatMult, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift,
              ast.RShift, ast.Invert, ast.Attribute, ast.Subscript, ast.Lambda, ast.Starred, ast.NamedExpr,
              ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr, ast.Await, ast.Yield, ast.GeneratorExp,
              ast.ListComp, ast.SetComp, ast.DictComp, ast.In, ast.NotIn, ast.Is, ast.IsNot)


# -- C --------------------------------------------------------------------------------------
def c_expr(node) -> str:
    """One expression in C, of type T."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return f"(T){float(node.value)!r}"
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.BinOp):
        return f"({c_expr(node.left)} {_C_BINOPS[type(node.op)]} {c_expr(node.right)})"
    if isinstance(node, ast.UnaryOp):
        op = {ast.USub: "-", ast.UAdd: "+", ast.Not: "!"}[type(node.op)]
        return f"({op}{c_expr(node.operand)})"
    if isinstance(node, ast.Compare):
        parts, left = [], node.left
        for cmp, right in zip(node.ops, node.comparators):
            parts.append(f"({c_expr(left)} {_C_CMPOPS[type(cmp)]} {c_expr(right)})")
            left = right
        return "(" + " && ".join(parts) + ")"
    if isinstance(node, ast.BoolOp):
        return "(" + (" && " if isinstance(node.op, ast.And) else " || ").join(c_expr(v) for v in node.values) + ")"
    if isinstance(node, ast.IfExp):
        return f"({c_expr(node.test)} ? {c_expr(node.body)} : {c_expr(node.orelse)})"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return f"{FUNCTIONS[node.func.id][0]}({', '.join(c_expr(a) for a in node.args)})"
    raise DensennError(f"cannot write {ast.unparse(node)!r} in C")  # parse() lets nothing else through


def to_c(body: Body, declared: set[str], indent: str = "    ") -> str:
    """The body as C statements; names not in ``declared`` become new ``T`` locals."""
    lines, seen = [], set(declared)
    for target, value in body.statements:
        prefix = "" if target in seen else "T "
        seen.add(target)
        lines.append(f"{indent}{prefix}{target} = {c_expr(value)};")
    return "\n".join(lines)


# -- Python (Numba) -------------------------------------------------------------------------
class _ToNumba(ast.NodeTransformer):
    def visit_Constant(self, node):
        return ast.Call(ast.Name("_T", ast.Load()), [ast.Constant(float(node.value))], [])

    def visit_Call(self, node):
        self.generic_visit(node)
        module, _, fn = FUNCTIONS[node.func.id][1].partition(".")
        node.func = ast.Attribute(ast.Name(module, ast.Load()), fn, ast.Load())
        return node


def py_expr(node) -> str:
    """One expression in Python for a Numba kernel (numbers as ``_T(·)``)."""
    return ast.unparse(_ToNumba().visit(ast.fix_missing_locations(_copy(node))))


def _copy(node):
    return ast.parse(ast.unparse(node), mode="eval").body


def to_python(body: Body, indent: str) -> str:
    """The body as Python statements for a Numba kernel."""
    return "\n".join(f"{indent}{target} = {py_expr(value)}" for target, value in body.statements)
