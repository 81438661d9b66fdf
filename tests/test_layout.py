"""House rules that keep the layers apart (STYLE.md habits 1 and 9)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 620  # STYLE.md habit 9: "modules under ~600 lines"
LAYERS = {
    "engine": {"streamlit"},
    "storage": {"streamlit", "torch"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path, forbidden",
    [(p, forbidden) for layer, forbidden in LAYERS.items() for p in sorted((ROOT / layer).glob("*.py"))],
    ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "",
)
def test_layer_does_not_import(path, forbidden):
    assert not (_imports(path) & forbidden), f"{path.name} imports {_imports(path) & forbidden}"


@pytest.mark.parametrize(
    "path",
    sorted(p for d in ("engine", "storage", "pages") for p in (ROOT / d).glob("*.py")) + [ROOT / "app.py"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_modules_stay_readable(path):
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines; STYLE.md habit 9 asks for under ~600: split it"
    assert "import *" not in text and "exec(" not in text


def test_checkpoints_always_load_weights_only():
    for path in sorted((ROOT / "engine").glob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}:{lineno} loads a checkpoint without weights_only=True"
