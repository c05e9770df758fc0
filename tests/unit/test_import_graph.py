"""Imports run one way (design.md, "Where things live"): orchestrator -> infra -> providers -> policies -> core, and
core imports none of the rest. Computed from the source with `ast`, lazy imports inside functions included, so a
new upward import fails here rather than in a newcomer's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: lowest first: a package may import only those before it
LAYERS = ("core", "policies", "providers", "infra", "orchestrator")


def imports(package: str) -> list[tuple[str, str, int]]:
    """(file, imported module, line) for every import of another of Sovra's packages in `package`."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out += [(str(path.relative_to(ROOT)), n, node.lineno) for n in names
                    if n.split(".")[0] in LAYERS and n.split(".")[0] != package]
    return out


@pytest.mark.parametrize("package", LAYERS)
def test_no_import_runs_up(package):
    below = set(LAYERS[:LAYERS.index(package)])
    upward = [f"{f}:{line} imports {m}" for f, m, line in imports(package) if m.split(".")[0] not in below]
    assert not upward, "imports must run down (" + " -> ".join(reversed(LAYERS)) + "):\n" + "\n".join(upward)


def test_the_graph_is_computed_from_real_imports():
    """The check above cannot pass vacuously: the packages do import each other, downward."""
    assert any(m.startswith("core.") for _, m, _ in imports("providers"))
    assert any(m.startswith("providers") for _, m, _ in imports("orchestrator"))
