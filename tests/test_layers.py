"""Data flows one way: the engine, the data layer and the models import nothing above them, so that the
training loop can be reused (a search, a server) without pulling in scoring, reports or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "imgclf"
ABOVE = ("imgclf.api", "imgclf.cli", "imgclf.evaluation", "imgclf.report", "imgclf.predict", "imgclf.export", "imgclf.preflight")


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", ["engine", "data", "models"])
def test_lower_layers_import_nothing_above_them(layer):
    wrong = {f"{path.relative_to(PACKAGE)}: {name}" for path in (PACKAGE / layer).rglob("*.py") for name in imports(path)
             if name.startswith(ABOVE)}
    assert not wrong, sorted(wrong)
