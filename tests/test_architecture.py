"""The dependency rules of docs/architecture.md, read statically from the sources with `ast`:
snapshotter may use unionfs, never the reverse; the `pyunion` router sits above both; no import
cycles among the project's modules (imports inside functions count: they run too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pyunion", "unionfs", "snapshotter")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module NAME refers to (a.b.c may be a module or a name in module a.b)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The project modules MODULE imports, anywhere in its body."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            t = _target(name)
            if t is not None and t != module:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    """Import edges between library modules. `__main__` modules are entry scripts (run by
    `python -m`, imported by nothing) and are left out as sources."""
    return {m: imports_of(m) for m in MODULES if not m.endswith("__main__")}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    """The checker itself: the router's lazy imports are edges, so a cycle through a function
    body cannot hide."""
    g = graph()
    assert "snapshotter.run" in g["pyunion.cli"]
    assert "unionfs.mount_cli" in g["pyunion.cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_unionfs_never_imports_snapshotter_or_the_router():
    bad = {(m, t) for m, ts in graph().items() if m.startswith("unionfs")
           for t in ts if not t.startswith("unionfs")}
    assert not bad, sorted(bad)


def test_snapshotter_never_imports_the_router():
    bad = {(m, t) for m, ts in graph().items() if m.startswith("snapshotter")
           for t in ts if t.startswith("pyunion")}
    assert not bad, sorted(bad)


def test_nothing_imports_an_entry_script():
    bad = {(m, t) for m, ts in graph().items() for t in ts if t.endswith("__main__")}
    assert not bad, sorted(bad)
