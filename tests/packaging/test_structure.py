"""The package's shape (issue: one home per fact): no import cycle among the project's modules, no module
importing another's private names, and no source file that has grown past what one reader holds at once.
Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PACKAGES = {"flowdpo": ROOT / "flowdpo", "flowdpo_operator": ROOT / "operator" / "flowdpo_operator"}
MAX_LINES = 480  # "about 450": the longest module (the vLLM backend) is a little over


def modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg, root in packages.items():
        for path in sorted(root.rglob("*.py")):
            parts = (pkg, *path.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """(module -> modules it imports, [(importer, module, private name)])."""
    edges: dict[str, set[str]] = {}
    private = []
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in mods:
                        deps.add(full)
                    elif target in mods:
                        deps.add(target)
                        if alias.name.startswith("_"):
                            private.append((name, target, alias.name))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
        deps.discard(name)
        edges[name] = deps
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_and_no_private_import():
    edges, private = import_graph(modules())
    assert len(edges) > 40  # the walk found the packages
    assert cycles(edges) == []
    assert private == []


def test_the_checks_catch_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from demo.sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from demo import a\n    from ..c import _hidden\n")
    (pkg / "c.py").write_text("_hidden = 1\n")
    edges, private = import_graph(modules({"demo": pkg}))
    assert cycles(edges) == [["demo.a", "demo.sub.b"]]
    assert private == [("demo.sub.b", "demo.c", "_hidden")]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_source_file_over_the_size_bound(package):
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGES[package].rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
