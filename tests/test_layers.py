"""Data flows one way: the engine, the data layer and the models import nothing above them, so that the
training loop can be reused (a search, a server) without pulling in scoring, reports or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "imgclf"
ABOVE = ("imgclf.api", "imgclf.cli", "imgclf.evaluation", "imgclf.report", "imgclf.predict", "imgclf.submission", "imgclf.export",
         "imgclf.preflight", "imgclf.finish", "imgclf.trials", "imgclf.label_review")


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


def _starts_work(fn: ast.FunctionDef) -> list[str]:
    """The calls in a test's body that train or start a process, outside `pytest.raises` blocks (a call
    expected to fail before any work is quick)."""
    refused = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.With) and any("raises" in ast.unparse(item.context_expr) for item in node.items):
            refused.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and id(node) not in refused:
            name = ast.unparse(node.func)
            if name in ("subprocess.run", "subprocess.Popen", "run_cli", "imgclf.train", "Trainer", "_trainer", "lr_find", "running_server"):
                found.append(name)
    return found


def test_every_test_that_trains_or_starts_a_process_is_marked_slow():
    """make test-fast leaves out what is marked slow; a test that trains or starts a process in its own body
    and is not marked would make the fast lane slow again without anyone noticing."""
    unmarked = []
    for path in sorted((Path(__file__).parent).glob("test_*.py")):
        tree = ast.parse(path.read_text())
        whole_file = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                         and ("slow" in ast.unparse(n.value) or "cuda" in ast.unparse(n.value)) for n in tree.body)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and not whole_file:
                marked = any("slow" in ast.unparse(d) or "cuda" in ast.unparse(d) for d in node.decorator_list)
                if not marked and _starts_work(node):
                    unmarked.append(f"{path.name}::{node.name} ({', '.join(sorted(set(_starts_work(node))))})")
    assert not unmarked, unmarked
