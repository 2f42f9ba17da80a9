"""The shape of the house (docs/architecture.md): no import circles, short functions, and no
module shadowed by a function of the same name. Read from the source with ``ast``, so every
import counts, at module level or inside a function (only ``if TYPE_CHECKING:`` blocks, which
never run, are left out)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

import leanconv

SRC = Path(leanconv.__file__).parent
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imported(node: ast.AST, here: str, is_package: bool, known: Set[str]) -> List[str]:
    """The leanconv modules an import statement loads (a ``from`` import of a submodule names it)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = here if is_package else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    return found or ([base] if base in known else [])


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _edges() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {id(n) for top in ast.walk(tree) if _is_type_checking(top) for n in ast.walk(top)}
        for node in ast.walk(tree):
            if id(node) not in skipped:
                graph[name].update(t for t in _imported(node, name, path.name == "__init__.py", known) if t != name)
    return graph


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_src():
    graph = _edges()
    assert graph["leanconv.conversion.pipeline"] >= {"leanconv.conversion.select", "leanconv.conversion.plan"}
    assert _circles(graph) == []


def test_no_function_over_80_lines():
    too_long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


def _walk_packages():
    for info in pkgutil.walk_packages(leanconv.__path__, "leanconv."):
        if info.ispkg and not info.name.startswith("leanconv.keras"):  # Keras needs its backend set first
            yield info.name


@pytest.mark.parametrize("name", ["leanconv", *_walk_packages()])
def test_no_function_shadows_a_module_beside_it(name):
    """Modules are nouns, functions verbs: ``leanconv.X`` is the module ``X`` whenever one exists."""
    package = importlib.import_module(name)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in ("keras", "__main__"):  # __main__ runs a command when imported
            continue
        module = importlib.import_module(f"{name}.{info.name}")
        assert getattr(package, info.name) is module, f"{name}.{info.name} is shadowed by a non-module"
