"""rundir/ (the run directory) sits below the engine, the shell and the UI: no module of it imports
textual, tui_trainer.ui, tui_trainer.cli or the engine — at import time or inside a function (the
AST is walked, so a function-local import counts). Imports only for type checkers are allowed."""

from __future__ import annotations

import ast
from pathlib import Path

import tui_trainer.rundir

FORBIDDEN = ("textual", "tui_trainer.ui", "tui_trainer.cli", "tui_trainer.engine")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # (only for type checkers: never run)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_rundir_module_imports_the_ui_the_shell_or_the_engine_anywhere():
    folder = Path(tui_trainer.rundir.__file__).parent
    offending = [f"{path.name}:{line} imports {name}"
                 for path in sorted(folder.glob("*.py"))
                 for line, name in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
                 if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)]
    assert offending == []


def test_the_walk_sees_a_function_local_import():
    tree = ast.parse("def f():\n    from tui_trainer.ui.follow import x\n")
    assert imported_modules(tree) == [(2, "tui_trainer.ui.follow")]
