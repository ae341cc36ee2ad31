"""The package's shape: no import circle between its modules, no module grown too large.

Imports are read from the source (``ast``), all of them: module level, inside functions
and under ``TYPE_CHECKING``, since each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import pathlib

import taskpool

ROOT = pathlib.Path(taskpool.__file__).parent
MAX_LINES = 600


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py") if "examples" not in p.relative_to(ROOT).parts}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for target in targets:
            # The deepest known module the import names (``from . import _status``).
            found = target
            while found and found not in known:
                found = found.rpartition(".")[0]
            if found and found not in (name, "taskpool"):
                out.add(found)
    return out


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {name: _imports(name, path, known) for name, path in sources.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "taskpool._core" in graph["taskpool._pool"]
    assert "taskpool._scheduler" in graph["taskpool._core"]
    assert "taskpool._workers" in graph["taskpool._core"]


def test_no_import_circle() -> None:
    assert _cycles(_graph()) == []


def test_a_circle_would_be_found() -> None:
    graph = _graph()
    graph["taskpool._task"] = graph["taskpool._task"] | {"taskpool._pool"}
    assert any("taskpool._task" in c and "taskpool._pool" in c for c in _cycles(graph))


def test_no_module_over_the_size_limit() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _sources().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}
