"""The package's layering, read from its source with ``ast`` (nothing is imported).

Data flows one way: config -> setup -> engine -> protocol -> results. An algorithm never imports
an engine or the config, the real runtime never imports the simulator, a network description
never imports the flow model, and the registries stay cheap to import (the config loads them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports; with ``top_level_only``, those run on import (not inside a
    function, not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = True
            if not (top_level_only and inner):
                if isinstance(child, ast.Import):
                    found.update(alias.name for alias in child.names)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        up = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*up, base] if base else up)
                    found.add(base)
                    found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = {_module_name(p): p for p in sorted((SRC / "peerlearn").rglob("*.py"))}


def _graph(*, top_level_only: bool) -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_node(name)
        for target in _imports(path, top_level_only=top_level_only):
            if target in MODULES and target != name:
                graph.add_edge(name, target)
    return graph


ALL_IMPORTS = _graph(top_level_only=False)


def _offenders(source: str, forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (a, b)
        for a, b in ALL_IMPORTS.edges()
        if (a == source or a.startswith(source + "."))
        and any(b == f or b.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("peerlearn.deploy", ("peerlearn.sim",)),
        ("peerlearn.protocols", ("peerlearn.config", "peerlearn.sim", "peerlearn.deploy")),
        ("peerlearn.network", ("peerlearn.sim", "peerlearn.deploy")),
        ("peerlearn.codecs", ("peerlearn.config", "peerlearn.protocols", "peerlearn.sim")),
        ("peerlearn.compute", ("peerlearn.sim", "peerlearn.deploy", "peerlearn.protocols")),
        ("peerlearn.models", ("peerlearn.config", "peerlearn.sim", "peerlearn.deploy")),
        ("peerlearn.data", ("peerlearn.sim", "peerlearn.deploy", "peerlearn.protocols")),
        # plugin-style algorithms: the public modules, never an engine
        ("peerlearn.algorithms", ("peerlearn.sim", "peerlearn.deploy", "peerlearn.experiment")),
    ],
)
def test_layer_never_imports(source: str, forbidden: tuple[str, ...]) -> None:
    """Function-level imports count too: a lazy import is still a dependency."""
    assert _offenders(source, forbidden) == []


def test_no_import_cycles_among_network_modules() -> None:
    network = ALL_IMPORTS.subgraph(n for n in MODULES if n.startswith("peerlearn.network"))
    assert list(nx.simple_cycles(network)) == []


def test_no_import_cycles_at_import_time() -> None:
    graph = _graph(top_level_only=True)
    assert sorted(nx.simple_cycles(graph)) == []


@pytest.mark.parametrize(
    "module", ["peerlearn.registry", "peerlearn.components", "peerlearn.plugins"]
)
def test_registries_import_only_the_standard_library(module: str) -> None:
    """The config imports the registries: they must not pull in torch, numpy or networkx."""
    third_party = {
        name.split(".")[0]
        for name in _imports(MODULES[module], top_level_only=True)
        if not name.startswith("peerlearn")
    }
    import sys

    assert third_party <= set(sys.stdlib_module_names) | {"__future__"}
    inner = {n for n in _imports(MODULES[module], top_level_only=True) if n in MODULES}
    assert inner <= {"peerlearn.registry", "peerlearn"}


def test_the_check_sees_imports() -> None:
    """The walk finds module-level and function-level imports (so the rules above can fail)."""
    assert ("peerlearn.sim.network", "peerlearn.sim.flows") in ALL_IMPORTS.edges()
    assert ("peerlearn.network.presets", "peerlearn.network.kollaps") in ALL_IMPORTS.edges()
    assert ("peerlearn.network.presets", "peerlearn.network.kollaps") not in _graph(
        top_level_only=True
    ).edges()


def test_the_engine_reads_the_config_only_when_it_is_built() -> None:
    """Data flows config -> setup -> engine: the simulator takes what it needs from the config
    in ``__init__``; its event handlers never reach back into it."""
    tree = ast.parse((SRC / "peerlearn" / "sim" / "engine.py").read_text())
    readers = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Simulator"):
        for fn in cls.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Name) and node.id == "cfg":
                    readers.add(fn.name)
                if isinstance(node, ast.Attribute) and node.attr == "cfg":
                    readers.add(fn.name)
    assert readers == {"__init__"}
