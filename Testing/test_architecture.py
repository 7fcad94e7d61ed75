"""The package's shape: stages flow one way (no import cycles, counting imports inside
functions), and no module shadows a standard-library one."""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "PALNetLandmarks" / "palnet"


def _modules():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("palnet",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name, path, modules):
    """The palnet modules ``name`` imports anywhere in its code (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                target = base + "." + node.module if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                dep = target + "." + alias.name if target + "." + alias.name in modules else target
                if dep in modules:
                    deps.add(dep)
        elif isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names if alias.name in modules)
    deps.discard(name)
    return deps


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # The package itself re-exports from its leaves; a leaf importing "palnet" is not a cycle worth naming.
    graph = {name: deps - {"palnet"} for name, deps in graph.items()}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(trail[trail.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is new in Python 3.10")
def test_no_module_is_named_like_the_standard_library():
    clash = sorted(name for name in _modules() if name.split(".")[-1] in sys.stdlib_module_names)
    assert not clash, clash


def test_statuses_are_named_in_one_module():
    """A scan's or a batch row's status is written as a string only in palnet/status.py; the
    other modules use its names, so a status cannot be misspelt in one of them."""
    from palnet import status
    words = set(status.SCAN_STATUSES) | {status.ERROR, status.SKIPPED, status.NOT_RUN}
    found = []
    for name, path in _modules().items():
        if name == "palnet.status":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        keys = {id(k) for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys}  # a report's "skipped"
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in words and id(node) not in keys:
                found.append("{}:{} {!r}".format(path.name, node.lineno, node.value))
    assert not found, found
