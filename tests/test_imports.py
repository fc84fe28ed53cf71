"""vod_d2's modules form no import circle, not even through imports inside functions."""

import ast
import os
from typing import Dict, List, Set

import vod_d2

PACKAGE_DIR = os.path.dirname(vod_d2.__file__)


def _modules() -> Dict[str, str]:
    """Dotted name -> path of every module of vod_d2 (a package is its ``__init__.py``)."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(PACKAGE_DIR))
                dotted = dotted.replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The modules of vod_d2 that ``name`` imports, wherever the import statement is."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            for alias in node.names:
                target = f"{source}.{alias.name}"
                found.add(target if target in modules else source)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & set(modules)


def _circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    circles = []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                component.append(stack.pop())
                if component[-1] == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circles():
    modules = _modules()
    # A package's __init__ imports its modules by design; circles through it are not counted.
    plain = {name for name, path in modules.items() if not path.endswith("__init__.py")}
    edges = {name: _imports(name, modules[name], modules) & plain for name in plain}
    assert _circles(edges) == []
