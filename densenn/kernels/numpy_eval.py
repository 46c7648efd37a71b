"""A declared body evaluated with NumPy, for operations that bring no NumPy form of their own.

This is the NumPy path's fallback for user-declared operations (the ``cpu:numpy`` engine,
or a machine without Numba): each expression becomes NumPy calls on whole arrays
(``x if c else y`` is ``numpy.where``), so it is correct but makes temporaries; the
built-in operations have allocation-free NumPy forms of their own.
"""
from __future__ import annotations

import ast

import numpy as np

from densenn.kernels import expr

_NUMPY = {"sqrt": np.sqrt, "exp": np.exp, "log": np.log, "tanh": np.tanh, "log1p": np.log1p, "expm1": np.expm1,
          "abs": np.abs, "max": np.fmax, "min": np.fmin, "isnan": np.isnan}


class _ToNumpy(ast.NodeTransformer):
    def visit_IfExp(self, node):
        self.generic_visit(node)
        return _call("where", [node.test, node.body, node.orelse])

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        fn = "logical_and" if isinstance(node.op, ast.And) else "logical_or"
        out = node.values[0]
        for value in node.values[1:]:
            out = _call(fn, [out, value])
        return out

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return _call("logical_not", [node.operand]) if isinstance(node.op, ast.Not) else node

    def visit_Compare(self, node):
        self.generic_visit(node)
        if len(node.ops) == 1:
            return node
        parts, left = [], node.left
        for op, right in zip(node.ops, node.comparators):
            parts.append(ast.Compare(left, [op], [right]))
            left = right
        out = parts[0]
        for part in parts[1:]:
            out = _call("logical_and", [out, part])
        return out

    def visit_Call(self, node):
        self.generic_visit(node)
        node.func = ast.Name(f"_f_{node.func.id}", ast.Load())
        return node


def _call(fn: str, args):
    return ast.Call(ast.Attribute(ast.Name("np", ast.Load()), fn, ast.Load()), args, [])


def numpy_form(arrays: str, scalars: str, body: str):
    """``run(engine, arrays, scalars, work)`` that evaluates ``body`` with NumPy and
    writes the arrays it assigns. Of the roles after a colon only ``row`` matters: such a
    vector is read as a column, so that it broadcasts along the rows of 2-D arrays."""
    names = tuple(item.partition(":")[0] for item in arrays.split())
    by_row = tuple(item.partition(":")[2] == "row" for item in arrays.split())
    scalar_names = tuple(scalars.split())
    parsed = expr.parse(body, set(names) | set(scalar_names), "numpy form")
    code = []
    for target, value in parsed.statements:
        tree = ast.Expression(_ToNumpy().visit(expr._copy(value)))
        code.append((target, compile(ast.fix_missing_locations(tree), "<densenn numpy form>", "eval")))
    writes = [n for n in dict.fromkeys(t for t, _ in parsed.statements) if n in names]
    functions = {"np": np, **{f"_f_{k}": v for k, v in _NUMPY.items()}}
    try:
        from scipy.special import erf
        functions["_f_erf"] = erf
    except ImportError:  # scipy is a dependency; erf only matters to bodies that call it
        pass

    def run(engine, arrays, scalars, work):
        env = dict(functions)
        args = tuple(arrays) + tuple(scalars)
        env.update(zip(names + scalar_names, args))
        if True in by_row and max(np.ndim(x) for x in arrays) == 2:
            env.update({n: x.reshape(-1, 1) for n, x, r in zip(names, arrays, by_row) if r})
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for target, compiled in code:
                env[target] = eval(compiled, env)      # noqa: S307 (our own parsed body)
        for n in writes:
            np.copyto(args[names.index(n)], env[n], casting="unsafe")  # type: ignore[arg-type]
    return run


# -- helpers for the allocation-free NumPy forms of the built-in operations ---------------------
def per_row(ufunc, x, v, out):
    """out[i, j] = ufunc(x[i, j], v[i]) for an (n, m) ``x`` and an (n,) ``v``; returns out.

    A 2-D ufunc call that broadcasts a vector makes NumPy copy it into an iteration
    buffer (tens of KiB, every call); 1-D calls along the shorter side of ``x`` need
    none, so a training step stays allocation-free.
    """
    n, m = x.shape
    if m <= n:
        for j in range(m):
            ufunc(x[:, j], v, out=out[:, j])
    else:
        for i in range(n):
            ufunc(x[i], v[i], out=out[i])
    return out


def per_col(ufunc, x, v, out):
    """out[i, j] = ufunc(x[i, j], v[j]) for an (n, m) ``x`` and an (m,) ``v`` (a bias-like
    vector), without NumPy's broadcasting buffer (see per_row); returns out."""
    n, m = x.shape
    if n <= m:
        for i in range(n):
            ufunc(x[i], v, out=out[i])
    else:
        for j in range(m):
            ufunc(x[:, j], v[j], out=out[:, j])
    return out
