"""Imports run one way (design.md, "Where things live"): orchestrator -> infra -> providers -> policies -> core, and
core imports none of the rest. Computed from the source with `ast`, lazy imports inside functions included, so a
new upward import fails here rather than in a newcomer's head. Everything is imported under the `sovra` namespace
it is installed as: a bare `import orchestrator` would load a second copy of a module from the checkout."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: lowest first: a package may import only those before it
LAYERS = ("core", "policies", "providers", "infra", "orchestrator")


def _modules(tree: ast.AST) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from sovra import providers` imports the package `sovra.providers`
            out += [(f"{node.module}.{a.name}" if node.module == "sovra" else node.module, node.lineno)
                    for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
    return out


def imports(package: str) -> list[tuple[str, str, int]]:
    """(file, layer imported, line) for every import of another of Sovra's packages in `package`."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name, line in _modules(ast.parse(path.read_text(encoding="utf-8"))):
            parts = name.split(".")
            if parts[0] == "sovra" and len(parts) > 1 and parts[1] in LAYERS and parts[1] != package:
                out.append((str(path.relative_to(ROOT)), parts[1], line))
    return out


@pytest.mark.parametrize("package", LAYERS)
def test_no_import_runs_up(package):
    below = set(LAYERS[:LAYERS.index(package)])
    upward = [f"{f}:{line} imports sovra.{m}" for f, m, line in imports(package) if m not in below]
    assert not upward, "imports must run down (" + " -> ".join(reversed(LAYERS)) + "):\n" + "\n".join(upward)


def test_the_graph_is_computed_from_real_imports():
    """The check above cannot pass vacuously: the packages do import each other, downward."""
    assert any(m == "core" for _, m, _ in imports("providers"))
    assert any(m == "providers" for _, m, _ in imports("orchestrator"))


def test_nothing_imports_a_package_by_its_bare_folder_name():
    bare = []
    for folder in (*LAYERS, "tests", "bench", "sovra"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
                continue  # a hidden folder (a virtual environment, a cache), not the project's code
            bare += [f"{path.relative_to(ROOT)}:{line} imports {name}"
                     for name, line in _modules(ast.parse(path.read_text(encoding="utf-8")))
                     if name.split(".")[0] in LAYERS]
    assert not bare, "import Sovra's packages as sovra.<package>:\n" + "\n".join(bare)


def test_every_package_folder_is_installed_under_sovra():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: name for name, folder in config["package-dir"].items()}
    found = {mapped[p.parent.relative_to(ROOT).parts[0]] + "".join(
        f".{x}" for x in p.parent.relative_to(ROOT).parts[1:]) for folder in (*LAYERS, "sovra")
        for p in (ROOT / folder).rglob("__init__.py")}
    assert found == set(config["packages"])


def test_the_router_imports_no_provider():
    """The router is handed its clients (and what direct mode may see) by its composition root
    (`orchestrator/serving/ray_apps.py`, the SDK): it names the client interface for type checkers only."""

    def runtime_imports(tree: ast.AST) -> list[tuple[str, int]]:
        out = []
        for node in ast.iter_child_nodes(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out += _modules(node)
            else:
                out += runtime_imports(node)
        return out

    found = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((ROOT / "orchestrator" / "router").rglob("*.py"))
             for name, line in runtime_imports(ast.parse(path.read_text(encoding="utf-8")))
             if name.startswith("sovra.providers")]
    assert not found, "\n".join(found)
