"""House rules that keep the layers apart (STYLE.md habits 1 and 9)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
def test_modules_import_no_star_and_exec_nothing(path):
    text = path.read_text()
    assert "import *" not in text and "exec(" not in text


def _module_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports at its top level (imports inside functions are left out)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_import_cycles_between_modules():
    modules = {f"{p.parent.name}.{p.stem}": p for d in ("engine", "storage") for p in (ROOT / d).glob("*.py")}
    graph = {name: {m for m in _module_imports(p) if m in modules and m != name} for name, p in modules.items()}
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        seen[name] = 1
        for nxt in sorted(graph[name]):
            assert seen.get(nxt) != 1, "import cycle: " + " -> ".join(path + [name, nxt])
            if nxt not in seen:
                visit(nxt, path + [name])
        seen[name] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [])


def test_checkpoints_always_load_weights_only():
    for path in sorted((ROOT / "engine").glob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}:{lineno} loads a checkpoint without weights_only=True"


def _private_imports(path: Path) -> list[str]:
    """``from engine.x import _name`` lines: a module's private names are its own."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{node.module}.{alias.name}" for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("engine", "storage", "pages")
            for alias in node.names if alias.name.startswith("_")]


@pytest.mark.parametrize(
    "path",
    sorted(p for d in ("engine", "storage", "pages") for p in (ROOT / d).glob("*.py")) + [ROOT / "app.py"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_private_name_is_imported_from_another_module(path):
    assert _private_imports(path) == []


SQL_START = ("SELECT ", "UPDATE ", "DELETE FROM", "INSERT ", "CREATE TABLE", "ALTER TABLE", "BEGIN", "PRAGMA")


@pytest.mark.parametrize(
    "path",
    sorted(p for d in ("engine", "pages") for p in (ROOT / d).glob("*.py")) + [ROOT / "app.py", ROOT / "server.py"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_sql_lives_in_storage_only(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    statements = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value.lstrip().startswith(SQL_START)]
    assert statements == []
