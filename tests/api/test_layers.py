"""The package's modules form layers: lower layers never import higher ones, not even lazily, and no loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nbdurable"

LAYERS: list[set[str]] = [
    {"errors", "_types", "_keys", "_clock"},  # plain values: statuses, sentinels, ids, time
    {"_process", "_loop"},  # process-wide state; blocking calls inside a running loop
    {  # data, store
        "_preview",
        "_datahash",
        "_hashing",
        "_codec_base",
        "_frames",
        "_codecs",
        "_serde",
        "_fingerprint",
        "_records",
        "_models",
        "_index",
        "_doorbell",
        "_diskcompat",
        "_diskindex",
        "_datafiles",
        "_trust",
        "_store",
        "_cel",
        "_events",
    },
    {  # the runtime
        "_lease",
        "_run",
        "_executors",
        "_actions",
        "_lifecycle",
        "_values",
        "_engine",
        "_kinds",
        "_step",
        "_execute",
        "_function",
        "_history",
        "_client",
        "_cron",
        "_inngest",
        "testing",
    },
    {  # views and the notebook
        "_text",
        "_display",
        "_view",
        "_cellast",
        "_cellio",
        "_cellstore",
        "_cellstep",
        "_commands",
        "_magics",
        "__main__",
    },
    {"__init__"},  # the public names
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
ONLY_IN = {
    "IPython": {"_magics", "_view"},
    "ipywidgets": {"_view"},
    "diskcache": {"_diskcompat", "_diskindex", "_store"},
    "distributed": set(),  # a Dask executor is recognised by its class's module, never imported
    "dask": set(),
    "cloudpickle": {"_executors"},  # only to check what a Dask executor could not send
}
"""Third-party packages only these modules may import."""


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            todo.append(child)
    return out


def _imports(name: str) -> set[str]:
    """Every package module and third-party top-level package ``name`` imports at run time, lazily or not."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "nbdurable":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("nbdurable."):
                found.add(node.module.split(".")[1])
            else:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.add(parts[1] if parts[0] == "nbdurable" and len(parts) > 1 else parts[0])
    return found


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in a layer (and so be checked)."""
    assert set(MODULES) == set(LAYER)


@pytest.mark.parametrize("name", MODULES)
def test_a_module_imports_only_its_own_layer_and_below(name: str) -> None:
    """No module imports a module of a higher layer, even inside a function."""
    higher = sorted(m for m in _imports(name) if m in LAYER and LAYER[m] > LAYER[name])
    assert higher == []


@pytest.mark.parametrize("name", MODULES)
def test_heavy_packages_are_imported_only_where_they_belong(name: str) -> None:
    """IPython, ipywidgets, diskcache and Dask's packages each stay in the few modules whose job they are."""
    wrong = sorted(pkg for pkg, allowed in ONLY_IN.items() if pkg in _imports(name) and name not in allowed)
    assert wrong == []


def test_no_import_loop() -> None:
    """Package modules import one another without a loop."""
    graph = {name: {m for m in _imports(name) if m in LAYER and m != "__init__"} for name in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [])


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    """Every module imports by itself (no hidden dependence on what was imported before)."""
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in MODULES:
        if name in ("__init__", "__main__"):
            continue
        subprocess.run([sys.executable, "-c", code, f"nbdurable.{name}"], check=True, timeout=60)
