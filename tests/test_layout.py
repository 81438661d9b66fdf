"""House rules that keep the layers and modules apart, as docs/ARCHITECTURE.md states them.

Every check reads the source with ``ast``: it sees imports inside functions as well as at the top.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "engine": {"streamlit"},
    "storage": {"streamlit", "torch"},
}
PROGRAM = sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("storage/*.py"), *ROOT.glob("pages/*.py"),
                  *ROOT.glob("ui/*.py"), ROOT / "app.py", ROOT / "server.py"])
EVERYTHING = PROGRAM + sorted([*ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py")])
SQL_START = ("SELECT ", "UPDATE ", "DELETE FROM", "INSERT ", "CREATE TABLE", "ALTER TABLE", "BEGIN", "PRAGMA")


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``path``, at the top level and inside functions and classes."""
    return [node for node in ast.walk(_tree(path)) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _top_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in _imports(path):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path, forbidden",
    [(p, forbidden) for layer, forbidden in LAYERS.items() for p in sorted((ROOT / layer).rglob("*.py"))],
    ids=lambda v: _id(v) if isinstance(v, Path) else "",
)
def test_layer_does_not_import(path, forbidden):
    assert _top_packages(path) & forbidden == set()


@pytest.mark.parametrize("path", PROGRAM, ids=_id)
def test_modules_import_no_star_and_exec_nothing(path):
    text = path.read_text()
    assert "import *" not in text and "exec(" not in text


def _import_graph() -> dict[str, set[str]]:
    """Module -> the program's modules it imports anywhere in its body (a package counts as its __init__)."""
    modules = {_module_name(p): p for p in PROGRAM}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in _imports(path):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            assert node.level == 0, f"{_id(path)}:{node.lineno} uses a relative import"
            for alias in node.names:  # `from engine.cli import train` imports the module engine.cli.train
                submodule = f"{node.module}.{alias.name}"
                targets.add(submodule if submodule in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}  # state: 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [name, nxt] if nxt in path else [name, nxt])
            elif nxt not in state:
                visit(nxt, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return found


def test_the_import_graph_sees_function_level_imports():
    assert "engine.training.loop" in _import_graph()["engine.jobs.runner"]


def test_no_import_cycles_between_modules():
    assert _cycles(_import_graph()) == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("path", EVERYTHING, ids=_id)
def test_no_private_name_is_imported_from_another_module(path):
    """``from engine.x import _name``: a module's private names are its own."""
    private = [f"{node.module}.{alias.name}" for node in _imports(path) if isinstance(node, ast.ImportFrom)
               and node.module and node.module.split(".")[0] in ("engine", "storage", "pages")
               for alias in node.names if alias.name.startswith("_")]
    assert private == []


@pytest.mark.parametrize("path", EVERYTHING, ids=_id)
def test_nothing_walks_the_garbage_collector_to_find_objects(path):
    """Finding a library's objects through ``gc.get_objects()`` breaks on its next release; use its API."""
    calls = [node.lineno for node in ast.walk(_tree(path)) if isinstance(node, ast.Attribute)
             and node.attr == "get_objects" and isinstance(node.value, ast.Name) and node.value.id == "gc"]
    assert calls == []


@pytest.mark.parametrize("path", [p for p in PROGRAM if not _id(p).startswith("storage")], ids=_id)
def test_sql_lives_in_storage_only(path):
    statements = [node.value for node in ast.walk(_tree(path)) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and node.value.lstrip().startswith(SQL_START)]
    assert statements == []


@pytest.mark.parametrize("path", EVERYTHING, ids=_id)
def test_checkpoints_always_load_weights_only(path):
    """``torch.load`` runs pickled code unless ``weights_only=True``."""
    unsafe = [node.lineno for node in ast.walk(_tree(path)) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
              and not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                          for k in node.keywords)]
    assert unsafe == []


# The one module that reads checkpoint files: the format's owner. Everything else (training, resuming,
# prediction, the shipped model, the pages, the API) reads through its functions.
CHECKPOINT_READERS = {"engine/training/checkpoint.py"}


def _torch_loads(tree: ast.AST) -> list[int]:
    """Lines of every ``torch.load(...)`` call in ``tree``."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"]


@pytest.mark.parametrize("path", [p for p in PROGRAM if _id(p) not in CHECKPOINT_READERS], ids=_id)
def test_only_the_checkpoint_module_calls_torch_load(path):
    assert _torch_loads(_tree(path)) == []


def test_the_checkpoint_module_does_call_torch_load():
    for name in CHECKPOINT_READERS:
        assert _torch_loads(_tree(ROOT / name)), name


def test_a_torch_load_would_be_found():
    assert _torch_loads(ast.parse("def f(p):\n    import torch\n    return torch.load(p, weights_only=True)")) == [3]


# The faces: what turns an error into something a user reads (the dashboard, the HTTP API, the CLI).
FACES = sorted([*ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py"), *ROOT.glob("engine/api*.py"),
                *ROOT.glob("engine/cli/*.py"), ROOT / "app.py", ROOT / "server.py"])


def _caught_names(tree: ast.AST) -> set[str]:
    """The exception names every ``except`` clause in ``tree`` names (``except (A, b.C)`` gives A and C)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            for part in (node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]):
                names.add(part.attr if isinstance(part, ast.Attribute) else getattr(part, "id", ""))
    return names


@pytest.mark.parametrize("path", FACES, ids=_id)
def test_no_face_catches_value_error(path):
    """A face turns only a UserError into a sentence (engine.errors.user_error decides); a ValueError from a
    bug must reach the log, not the user as if it were a sentence for them."""
    assert "ValueError" not in _caught_names(_tree(path))


def test_a_caught_value_error_would_be_found():
    assert "ValueError" in _caught_names(ast.parse("try:\n    pass\nexcept (OSError, builtins.ValueError):\n    pass"))


def _app_pages() -> set[str]:
    """The files app.py's navigation names in ``st.Page("pages/…")``."""
    return {node.args[0].value for node in ast.walk(_tree(ROOT / "app.py"))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Page"
            and node.args and isinstance(node.args[0], ast.Constant)}


def test_pages_holds_only_the_page_scripts_app_py_navigates_to():
    """Widgets shared by pages live in ui/; pages/ is what Streamlit lists as pages."""
    assert {_id(p) for p in ROOT.glob("pages/*") if p.name != "__pycache__"} == _app_pages()


@pytest.mark.parametrize("path", EVERYTHING, ids=_id)
def test_nothing_imports_a_page_script(path):
    imported = {node.module for node in _imports(path) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in _imports(path) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name == "pages" or name.startswith("pages.")} == set()


def _deletes_files(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr in ("rmtree", "unlink", "remove", "rmdir")
               for node in ast.walk(tree))


# The registry's modules: every module of storage/ but the file layout (paths) and the zip unpacking (archives).
REGISTRY = [p for p in sorted(ROOT.glob("storage/*.py")) if p.name not in ("paths.py", "archives.py")]


@pytest.mark.parametrize("path", REGISTRY, ids=_id)
def test_the_registry_deletes_rows_never_files(path):
    """File deletion belongs with engine.housekeeping; the registry (storage.db and the table modules it
    re-exports) only forgets rows (and moves a data set out of use under its lock)."""
    assert not _deletes_files(_tree(path))


def test_a_file_deletion_would_be_found():
    assert _deletes_files(ast.parse("shutil.rmtree(folder)"))


# The stored value that names the classical filter (an inference job's checkpoint_path, a preset's model id,
# an API model id) is spelled once in the vocabulary; everything else asks engine.inference.predictor.
MAGIC_SOURCE = "baseline"
SPELLS_THE_SOURCE = {"storage/vocabulary.py", "engine/inference/predictor.py"}


def _magic_strings(tree: ast.AST) -> list[int]:
    """Lines of string constants that are exactly the classical filter's stored name (sentences that merely
    mention the word are not)."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip() == MAGIC_SOURCE]


@pytest.mark.parametrize("path", [p for p in PROGRAM if _id(p) not in SPELLS_THE_SOURCE], ids=_id)
def test_the_classical_filter_is_named_through_the_predictor(path):
    """A ``"baseline"`` literal outside the vocabulary is a second dispatch between the kinds of source:
    use ``engine.inference.predictor`` (``CLASSICAL``, ``Predictor(source).kind``, ``checkpoint_file``)."""
    assert _magic_strings(_tree(path)) == []


def test_a_magic_source_string_would_be_found():
    assert _magic_strings(ast.parse("if checkpoint == 'baseline':\n    pass")) == [1]


def test_the_vocabulary_still_spells_the_stored_value():
    """Old rows, presets and API clients say "baseline": the value itself must not change."""
    assert {_id(p) for p in PROGRAM if _magic_strings(_tree(p))} == {"storage/vocabulary.py"}


def _spelled_vocabularies(tree: ast.AST) -> list[int]:
    """Lines of list or tuple literals that spell out a post-processing vocabulary (the threshold modes, the
    kernel shapes) instead of taking it from the option's spec."""
    from engine.postprocess.config import KERNEL_SHAPES, THRESHOLD_MODES

    words = [set(THRESHOLD_MODES), set(KERNEL_SHAPES)]
    return [node.lineno for node in ast.walk(tree) if isinstance(node, (ast.List, ast.Tuple))
            and node.elts and all(isinstance(e, ast.Constant) for e in node.elts)
            and {e.value for e in node.elts} in words]


@pytest.mark.parametrize("path", sorted([*ROOT.glob("pages/*.py"), *ROOT.glob("ui/*.py")]), ids=_id)
def test_widgets_take_the_choices_from_the_spec(path):
    assert _spelled_vocabularies(_tree(path)) == []


def test_a_spelled_vocabulary_would_be_found():
    assert _spelled_vocabularies(ast.parse('st.selectbox("Mode", ["fixed", "otsu", "hysteresis"])')) == [1]


MAX_TEST_FILE_LINES = 500


def test_no_file_in_tests_exceeds_500_lines():
    """A test file past 500 lines holds more than one face or topic: split it by the face it tests (engine,
    CLI, API, pages, browser), with what the parts share in a tests/<topic>_helpers.py module or conftest.py."""
    lines = {_id(p): len(p.read_text().splitlines()) for p in sorted(ROOT.glob("tests/**/*.py"))}
    long = {name: n for name, n in lines.items() if n > MAX_TEST_FILE_LINES}
    assert long == {}, ", ".join(f"{name} has {n} lines (at most {MAX_TEST_FILE_LINES})" for name, n in long.items())


def _imported_modules(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (``from a.b import c`` counts as ``a.b``)."""
    names: set[str] = set()
    for node in _imports(path):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif node.module and node.level == 0:
            names.add(node.module)
    return names


# The command line is a face: the engine below it never reaches up to it (only engine/__main__ starts it).
BELOW_THE_COMMAND_LINE = [p for p in sorted(ROOT.glob("engine/**/*.py"))
                          if "cli" not in p.relative_to(ROOT).parts and p.name != "__main__.py"]


@pytest.mark.parametrize("path", BELOW_THE_COMMAND_LINE, ids=_id)
def test_the_engine_never_imports_the_command_line(path):
    assert {m for m in _imported_modules(path) if m == "engine.cli" or m.startswith("engine.cli.")} == set()


def test_housekeeping_imports_only_storage_and_the_foundations():
    """Retention and deletion of files work on the registry and the file layout alone (docs/ARCHITECTURE.md)."""
    engine = {m for m in _imported_modules(ROOT / "engine" / "housekeeping.py") if m.startswith("engine")}
    assert engine <= {"engine.errors"}
