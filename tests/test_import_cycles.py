"""No import cycles inside ``ae_pipeline``: the layers stay one-directional.

Every ``import`` of an ``ae_pipeline`` module counts, also the ones inside functions (a lazy
import hides a cycle, it does not remove it); only ``if TYPE_CHECKING:`` blocks do not (they
never run). A package's ``__init__`` imported on the way to a submodule does not count either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ae_pipeline"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``ae_pipeline`` modules that module ``name`` imports (at any depth of its code)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if _is_type_checking(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            named.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            named.add(module)
            named.update(f"{module}.{a.name}" for a in node.names)  # submodules imported by name

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    found = set()
    for module in named:
        if not module.startswith("ae_pipeline"):
            continue
        while module not in modules and "." in module:
            module = module.rpartition(".")[0]
        if module in modules and module != name:
            found.add(module)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "ae_pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from ae_pipeline.b import f\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ae_pipeline import c\n"
        "def f():\n    from . import a\n"
    )
    (pkg / "c.py").write_text("import ae_pipeline.a\n")
    modules = {f"ae_pipeline.{p.stem}": p for p in pkg.glob("[abc].py")}
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph == {
        "ae_pipeline.a": {"ae_pipeline.b"},
        "ae_pipeline.b": {"ae_pipeline.a"},  # not c: only under TYPE_CHECKING
        "ae_pipeline.c": {"ae_pipeline.a"},
    }
    assert cycles(graph) == [["ae_pipeline.a", "ae_pipeline.b"]]


def test_no_import_cycles_in_the_package():
    modules = _modules()
    assert len(modules) > 40
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == [], "import cycles (break them by moving the shared part down)"


@pytest.mark.parametrize("layer", ["ae_pipeline.models"])
def test_the_models_package_imports_no_other_layer(layer):
    """models/ depends on torch and numpy only: no Beam, Kafka or serving code."""
    modules = _modules()
    for name, path in modules.items():
        if name == layer or name.startswith(layer + "."):
            outside = {m for m in imports_of(name, path, modules) if not m.startswith(layer)}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_production_code_never_imports_the_local_test_infrastructure():
    """``ae_pipeline.local`` (the local broker, runners, jars: tests and demos) builds on the
    library; the library never imports it."""
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("ae_pipeline.local"):
            continue
        local = {m for m in imports_of(name, path, modules) if m.startswith("ae_pipeline.local")}
        assert not local, f"{name} imports {sorted(local)}"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("ae_pipeline.training", ("ae_pipeline.beam", "ae_pipeline.serving", "ae_pipeline.kafka")),
        ("ae_pipeline.serving", ("ae_pipeline.beam", "ae_pipeline.kafka", "ae_pipeline.consumer")),
        ("ae_pipeline.kafka", ("ae_pipeline.beam", "ae_pipeline.serving", "ae_pipeline.models")),
    ],
)
def test_a_layer_never_imports_the_layers_above_it(layer, forbidden):
    """training/ and serving/ run without a runtime: usable and tested without Beam's runners
    (the artifact and registry read files through Beam's FileSystems only); kafka/ knows
    nothing of Beam, serving or models."""
    modules = _modules()
    for name, path in modules.items():
        if name == layer or name.startswith(layer + "."):
            above = {m for m in imports_of(name, path, modules) if m.startswith(forbidden)}
            assert not above, f"{name} imports {sorted(above)}"
