"""GPU kernel source for both GPU engines, from the declared operations.

One text per kernel; a small dialect table (the prelude's macros) makes it OpenCL C or
CUDA C. Every kernel takes each array as a pointer plus an element offset (``z, z0``):
OpenCL needs that for views (a buffer and where the view starts), CUDA passes offset 0.
Sizes are ``I`` (a signed 64-bit integer); elementwise kernels loop grid-stride over
``n``, the count passed last, so any launch size covers the work.
"""
from __future__ import annotations

import re

from densenn.kernels import expr
from densenn.kernels.ops import DECLARED, Map, RowMap, Sum
from densenn.kernels.random import C_SOURCE as UNIFORM

#: work-items per group in a reduction (a power of two; the local array is this long)
GROUP = 256

DIALECTS = {
    "opencl": """\
{pragma}
typedef {T} T;
typedef long I;
#define KERNEL __kernel void
#define GLOBAL __global
#define FOR_EACH(i, n) for (I i = get_global_id(0); i < (n); i += get_global_size(0))
#define LOCAL_ARRAY(type, name, size) __local type name[size]
#define BARRIER() barrier(CLK_LOCAL_MEM_FENCE)
#define LID ((I)get_local_id(0))
#define LSIZE ((I)get_local_size(0))
""",
    "cuda": """\
typedef {T} T;
typedef long long I;
#define KERNEL extern "C" __global__ void
#define GLOBAL
#define FOR_EACH(i, n) for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (I)blockDim.x * gridDim.x)
#define LOCAL_ARRAY(type, name, size) __shared__ type name[size]
#define BARRIER() __syncthreads()
#define LID ((I)threadIdx.x)
#define LSIZE ((I)blockDim.x)
""",
}

FP64_PRAGMA = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable"
CTYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long",
          "uint32": "unsigned int", "uint64": "unsigned long long", "int8": "signed char", "uint8": "unsigned char",
          "int16": "short", "uint16": "unsigned short", "bool": "unsigned char"}


def prelude(dialect: str, ctype: str) -> str:
    pragma = FP64_PRAGMA if dialect == "opencl" and ctype == "double" else ""
    return DIALECTS[dialect].format(T=ctype, pragma=pragma)


def _params(op, ltype: str | None = None) -> str:
    out = []
    for name, role in op.arrays:
        const = "" if name in op.writes else "const "
        t = "L" if role == "index" else "T"
        out.append(f"GLOBAL {const}{t} *p_{name}, const I {name}0")
    out += [f"const T {s}" for s in op.scalars]
    return ", ".join(out)


# -- the declared kinds --------------------------------------------------------------------------
#: where an element kernel reads an array of a role (the default: at the element, i)
_AT = {"col": "col", "row": "i / cols", "scalar": "0"}


def map_source(op: Map) -> str:
    """``op`` over n elements; a ``col`` array is read at ``i % cols``, a ``row`` one at ``i / cols``."""
    cols = any(role == "col" for _, role in op.arrays)
    read = op.parsed.read
    loads = [f"        {'' if n in op.writes else 'const '}T {n} = p_{n}[{n}0 + {_AT.get(r, 'i')}];"
             if n in read else f"        T {n};" for n, r in op.arrays]
    stores = [f"        p_{n}[{n}0 + i] = {n};" for n in op.writes]
    declared = set(op.array_names) | set(op.scalars)
    return (f"KERNEL {op.name}({_params(op)}, const I cols, const I n)\n{{\n"
            "    FOR_EACH(i, n) {\n"
            + ("        const I col = i % cols;\n" if cols else "")
            + "\n".join(loads) + "\n" + expr.to_c(op.parsed, declared, "        ") + "\n"
            + "\n".join(stores) + "\n    }\n}\n")


def _row_pointers(op) -> str:
    lines = []
    for name, role in op.arrays:
        const = "" if name in op.writes else "const "
        if role == "index":
            lines.append(f"        const L {name} = p_{name}[{name}0 + r];")
        elif role == "row":
            lines.append(f"        const T {name} = p_{name}[{name}0 + r];")
        elif role == "scalar":
            lines.append(f"        const T {name} = p_{name}[{name}0];")
        elif role == "col":
            lines.append(f"        GLOBAL {const}T *{name} = p_{name} + {name}0;")
        else:
            lines.append(f"        GLOBAL {const}T *{name} = p_{name} + {name}0 + r * cols;")
    return "\n".join(lines)


def row_source(op: RowMap) -> str:
    """``op.c_body`` once per row, for n rows of ``cols`` values."""
    return (f"KERNEL {op.name}({_params(op)}, const I cols, const I n)\n{{\n"
            "    FOR_EACH(r, n) {\n" + _row_pointers(op) + "\n" + _indent(op.c_body or "", 8) + "\n    }\n}\n")


_GROUP_SUM = """\
    LOCAL_ARRAY(T, part, {group});
    part[LID] = s;
    BARRIER();
    for (I h = LSIZE / 2; h > 0; h >>= 1) {{
        if (LID < h) part[LID] += part[LID + h];
        BARRIER();
    }}
    if (LID == 0) p_acc[acc0] += part[0];
"""


#: the same for a Sum's element loop (which has no ``col`` index)
_SUM_AT = {"row": "i / cols", "scalar": "0"}


def sum_source(op: Sum) -> str:
    """acc[0] += Σ term, in one group (batch-sized inputs: nothing to gain from more)."""
    params = _params(op) + ", GLOBAL T *p_acc, const I acc0, const I cols, const I n"
    if op.rows:
        loop = ("    for (I r = LID; r < n; r += LSIZE) {\n" + _row_pointers(op) + "\n        T term = (T)0;\n"
                + _indent(op.body, 8) + "\n        s += term;\n    }\n")
    else:
        loads = [f"        const T {n} = p_{n}[{n}0 + {_SUM_AT.get(r, 'i')}];" for n, r in op.arrays]
        declared = set(op.array_names) | set(op.scalars)
        loop = ("    for (I i = LID; i < n; i += LSIZE) {\n" + "\n".join(loads) + "\n"
                + expr.to_c(op.parsed, declared, "        ") + "\n        s += term;\n    }\n")
    return (f"KERNEL {op.name}({params})\n{{\n    T s = (T)0;\n" + loop
            + _GROUP_SUM.format(group=GROUP) + "}\n")


def _indent(text: str, n: int) -> str:
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    margin = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return "\n".join(" " * n + x[margin:] if x.strip() else "" for x in lines)


def source(op) -> str:
    """The kernel text for ``op`` (after the prelude; ``L`` typedef'd where it has labels)."""
    if isinstance(op, Map):
        return map_source(op)
    if isinstance(op, RowMap):
        return row_source(op)
    return sum_source(op)


def can(op) -> bool:
    """Whether the GPU engines have a form of ``op``."""
    return not isinstance(op, RowMap) or op.c_body is not None


# -- the engines' own operations -------------------------------------------------------------------
#: kernels that are not declared operations: column sums, the row gather, the BLAS level-1 ops,
#: the uniform draw
BASE = """
/* out[j] = sum over rows of x[i, j]: one work-item per column, deterministic, no atomics. */
KERNEL sum_rows(GLOBAL const T *x, const I x0, GLOBAL T *out, const I out0, const I rows, const I n)
{
    FOR_EACH(j, n) {
        T s = (T)0;
        for (I i = 0; i < rows; ++i) s += x[x0 + i * n + j];
        out[out0 + j] = s;
    }
}

KERNEL add_bias(GLOBAL T *z, const I z0, GLOBAL const T *b, const I b0, const I cols, const I n)
{
    FOR_EACH(i, n) z[z0 + i] += b[b0 + i % cols];
}

KERNEL axpy(const T alpha, GLOBAL const T *x, const I x0, GLOBAL T *y, const I y0, const I n)
{
    FOR_EACH(i, n) y[y0 + i] += alpha * x[x0 + i];
}

KERNEL scal(const T alpha, GLOBAL T *x, const I x0, const I n)
{
    FOR_EACH(i, n) x[x0 + i] *= alpha;
}
""" + UNIFORM

#: the names of the BASE kernels
BASE_NAMES = tuple(re.findall(r"KERNEL (\w+)\(", BASE))

#: out = src[idx] by rows, indices clipped into range like numpy.take(mode="clip"); S the data
#: type, IX the index type
TAKE = """
typedef {S} S;
typedef {IX} IX;
KERNEL take_rows(GLOBAL const S *src, const I src0, const I src_rows, GLOBAL const IX *idx, const I idx0,
                 GLOBAL S *out, const I out0, const I cols, const I n)
{{
    FOR_EACH(i, n) {{
        const I r = i / cols, j = i - r * cols;
        I k = (I)idx[idx0 + r];
        k = k < 0 ? 0 : (k >= src_rows ? src_rows - 1 : k);
        out[out0 + i] = src[src0 + k * cols + j];
    }}
}}
"""


def program(dialect: str, ctype: str, op=None, ltype: str = "int", take: tuple[str, str] | None = None) -> str:
    """A whole compilable text: the prelude and one declared ``op``, the engine's BASE
    kernels (``op`` None), or the row gather for ``take=(data ctype, index ctype)``."""
    head = prelude(dialect, ctype)
    if take is not None:
        return head + TAKE.format(S=take[0], IX=take[1])
    if op is None:
        return head + BASE
    labels = f"typedef {ltype} L;\n" if any(role == "index" for _, role in op.arrays) else ""
    return head + labels + source(op)


def cuda_sources() -> dict[str, str]:
    """The CUDA programs of the shared kernels and of every operation declared so far
    (``import densenn`` declares those of every built-in activation, cost, optimizer and
    metric), float and double: {name: text}. The CUDA engine's own are in its ``sources()``."""
    out = {}
    for ctype in ("float", "double"):
        out[f"base_{ctype}"] = program("cuda", ctype)
        out[f"take_{ctype}_long"] = program("cuda", ctype, take=(ctype, "long long"))
        for op in DECLARED:
            if can(op):
                out[f"{op.name}_{id(op):x}_{ctype}"] = program("cuda", ctype, op, ltype="long long")
    return out
