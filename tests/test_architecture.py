"""The import structure of medseg (docs/architecture.md): every import points down a layer, no package
imports another in a cycle, no module of a package imports another of the same package in a cycle.

Every import counts: module level, inside functions (lazy), under ``TYPE_CHECKING``, relative, and
``importlib.import_module("medseg...")`` with a literal name. A *unit* is a sub-package
(``medseg.io``) or a top-level module (``medseg.batch``); ``medseg`` is the package's own
``__init__``. A unit may import units of lower layers only; units of one layer do not know each other.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.paths import REPO

PKG = REPO / "medseg"

# Bottom to top. A unit imports only from layers below its own (docs/architecture.md has the same table).
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors"}),
    ("utilities", {"fsutil", "registry", "device", "executors", "csvsafe", "volume", "limits", "progress"}),
    ("core", {"medseg", "config", "manifest", "ray_runner"}),
    ("io and batch runs", {"io", "batch", "weights"}),
    ("engines", {"preprocess", "metrics", "models"}),
    ("engines on engines", {"postprocess", "report", "bundle", "mil"}),
    ("applications", {"inference", "training", "wsi"}),
    ("stages", {"stages"}),
    ("runner", {"pipeline"}),
    ("command line", {"cli"}),
    ("entry point", {"__main__"}),
]

# Imports allowed against the rules above: (importing module, imported module) -> why. Each entry must
# still exist (a stale one fails), so the list only shrinks. Empty: the code has no known violation.
EXCEPTIONS: dict[tuple[str, str], str] = {}

# Units that never import torch, even lazily: they run with numpy, scipy and SimpleITK alone.
TORCH_FREE = {"errors", "limits", "fsutil", "registry", "executors", "csvsafe", "volume", "progress", "medseg",
              "config", "manifest", "ray_runner", "io", "batch", "preprocess", "metrics", "postprocess", "report"}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(REPO).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The medseg module a dotted name lives in (``medseg.io.read_volume`` -> ``medseg.io``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(module: str, path: Path) -> Iterable[tuple[str, int]]:
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            # `from x import y` runs x (a package's __init__ too) and, when y is a submodule, x.y:
            # both are edges (as ../shared/tools/import_graph.py counts them).
            yield base, node.lineno
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:
                    yield sub, node.lineno
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            yield node.args[0].value, node.lineno


def _edges() -> dict[str, dict[str, int]]:
    """module -> {imported medseg module: first line}."""
    out: dict[str, dict[str, int]] = {m: {} for m in MODULES}
    for m, p in MODULES.items():
        for name, line in _imported_names(m, p):
            if name.split(".")[0] != "medseg":
                continue
            target = _resolve(name)
            if target and target != m:
                out[m].setdefault(target, line)
    return out


EDGES = _edges()


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medseg"


def _layer_of() -> dict[str, int]:
    out = {}
    for i, (_, units) in enumerate(LAYERS):
        for u in units:
            assert u not in out, f"{u} is in two layers"
            out[u] = i
    return out


LAYER_OF = _layer_of()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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


def _allowed(m: str, t: str) -> bool:
    return (m, t) in EXCEPTIONS


def test_every_unit_has_a_layer():
    units = {unit(m) for m in MODULES}
    assert not units - set(LAYER_OF), f"place these in LAYERS and docs/architecture.md: {sorted(units - set(LAYER_OF))}"
    assert not set(LAYER_OF) - units, f"LAYERS names units that do not exist: {sorted(set(LAYER_OF) - units)}"


def test_imports_point_down_the_layers():
    bad = []
    for m, targets in EDGES.items():
        for t, line in targets.items():
            a, b = unit(m), unit(t)
            if a != b and LAYER_OF[b] >= LAYER_OF[a] and not _allowed(m, t):
                rel = "up" if LAYER_OF[b] > LAYER_OF[a] else "sideways (same layer)"
                bad.append(f"{MODULES[m].relative_to(REPO)}:{line} imports {t}: {rel}, "
                           f"{LAYERS[LAYER_OF[a]][0]} -> {LAYERS[LAYER_OF[b]][0]}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for m, targets in EDGES.items():
        for t in targets:
            if unit(m) != unit(t) and not _allowed(m, t):
                graph.setdefault(unit(m), set()).add(unit(t))
    assert _cycles(graph) == []


@pytest.mark.parametrize("package", sorted({unit(m) for m in MODULES if m.count(".") >= 1
                                            and MODULES[f"medseg.{unit(m)}"].name == "__init__.py"}))
def test_no_import_cycle_between_modules_of_a_package(package):
    graph = {m: {t for t in EDGES[m] if unit(t) == package and not _allowed(m, t)}
             for m in MODULES if unit(m) == package}
    assert _cycles(graph) == []


def test_exceptions_are_still_needed():
    stale = [f"{m} -> {t}" for m, t in EXCEPTIONS if t not in EDGES.get(m, {})]
    assert not stale, f"remove from EXCEPTIONS (the import is gone): {stale}"


def test_torch_free_units_never_import_torch():
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {name}"
           for m, p in MODULES.items() if unit(m) in TORCH_FREE
           for name, line in _imported_names(m, p) if name.split(".")[0] == "torch" or name == "safetensors.torch"]
    assert not bad, "\n".join(bad)


def test_the_parser_sees_every_kind_of_import(tmp_path):
    src = tmp_path / "medseg" / "io" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("import medseg.errors\nfrom medseg import config\nfrom . import nifti\n"
                   "from ..metrics import overlap\n"
                   "def f():\n    from medseg.training.dataset import load_cases\n"
                   "    importlib.import_module('medseg.cli.main')\n")
    names = [n for n, _ in _imported_names("medseg.io.x", src)]
    assert names == ["medseg.errors", "medseg", "medseg.config", "medseg.io", "medseg.io.nifti",
                     "medseg.metrics", "medseg.metrics.overlap", "medseg.training.dataset", "medseg.cli.main"]


def test_docs_list_the_same_layers():
    text = (REPO / "docs" / "architecture.md").read_text("utf-8")
    rows = re.findall(r"^\| (\d+) \| ([^|]+?) \| ([^|]+?) \|", text, flags=re.M)
    doc = [(name, set(re.findall(r"`([\w.]+)`", units))) for _, name, units in rows]
    assert doc == LAYERS
