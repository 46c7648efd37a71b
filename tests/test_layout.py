"""The layout shows the design: the package's modules import each other without a cycle, at
the top of each module (no import hidden inside a function to break one), and none is
over ~500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import densenn

PACKAGE = Path(densenn.__file__).parent
#: modules allowed to import densenn modules inside functions, and why
DEFERRED = {
    "cli": "the command line imports a command's modules when that command runs: `densenn --help` stays quick",
}
MAX_LINES = 520


def _modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def _imports(tree, top_level_only):
    found = []
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("densenn"):
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("densenn")]
    return found


def test_no_import_cycle():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = {d for d in _imports(ast.parse(path.read_text()), True) if d in modules and d != name}
        # a package's own __init__ is what importing any of its modules runs first
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_import_inside_a_function():
    for name, path in _modules().items():
        if name.split(".")[1:2] and name.split(".")[1] in DEFERRED:
            continue
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        inner = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top
                 and _imports(ast.Module(body=[n], type_ignores=[]), True)]
        assert not inner, f"{name} imports {', '.join(ast.unparse(n) for n in inner)} inside a function"


def test_no_module_is_too_long():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
