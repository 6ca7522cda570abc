"""The layer rules of tui_trainer/, as each package's ``__init__`` docstring states them, checked on
the source: every import of every module, at the top or inside a function, relative or absolute
(and ``importlib.import_module("…")`` with a literal name), read from the AST, not from sys.modules.

    shared vocabulary (config, errors, events, control)  imports no other tui_trainer module
    analysis/   the vocabulary only; no torch
    data/ model/  the vocabulary only (never the engine, rundir/)
    rundir/     the vocabulary, analysis/, data/, model/ (never the engine)
    engine/     the vocabulary, analysis/, data/, model/, rundir/
    cli/        everything; the app (tui_trainer.ui) and Textual only inside a function
    ui/         everything but cli/
and none of the vocabulary, analysis/, data/, model/, rundir/, engine/ imports Textual or its kin.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "tui_trainer"
VOCABULARY = {"config", "config_checks", "errors", "events", "control", "bounded_read", "shown_text"}  # tui_trainer/<name>.py
TEXTUAL = {"textual", "textual_plotext", "plotext", "textual_serve"}  # the UI's libraries
EVERY_LAYER = {"vocabulary", "analysis", "data", "model", "rundir", "engine", "cli", "ui"}


@dataclass(frozen=True)
class Rule:
    may: frozenset  # the tui_trainer layers it may import (its own included)
    never: frozenset = frozenset(TEXTUAL)  # other top-level packages it must not import
    lazy: frozenset = frozenset()  # layers and packages it may import inside a function only


RULES = {
    "vocabulary": Rule(frozenset({"vocabulary"})),
    "analysis": Rule(frozenset({"vocabulary", "analysis"}), never=frozenset(TEXTUAL | {"torch"})),
    "data": Rule(frozenset({"vocabulary", "data"})),
    "model": Rule(frozenset({"vocabulary", "model"})),
    "rundir": Rule(frozenset({"vocabulary", "analysis", "data", "model", "rundir"})),
    "engine": Rule(frozenset({"vocabulary", "analysis", "data", "model", "rundir", "engine"})),
    "cli": Rule(frozenset(EVERY_LAYER), never=frozenset(), lazy=frozenset(TEXTUAL | {"ui"})),
    "ui": Rule(frozenset(EVERY_LAYER - {"cli"}), never=frozenset()),
    "entry": Rule(frozenset(EVERY_LAYER), never=frozenset()),  # tui_trainer/__main__.py: `python -m tui_trainer`
}

# Violations in files another developer is changing on their branch (issue 24): tolerated here
# until that branch is merged, then this set goes. A violation not listed fails the test.
KNOWN = {
    ("tui_trainer/rundir/lifecycle.py", "tui_trainer.rundir.loop_state"),  # LoopState moves to rundir/ next
}


# Modules that are themselves imported only inside functions may import their layer's lazy
# libraries at the top: the served viewer's server subclasses textual_serve's Server.
LAZY_MODULES = {"tui_trainer.cli.serve_guard"}


@dataclass(frozen=True)
class Import:
    line: int
    name: str  # absolute: "textual.app", "tui_trainer.ui.follow"
    in_function: bool
    type_checking: bool  # under `if TYPE_CHECKING:` (no import at run time, a dependency all the same)


def layer_of_module(module: str) -> str:
    """The layer a module of tui_trainer belongs to: "tui_trainer.rundir.lock" -> "rundir"."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in VOCABULARY or parts[1] in {"__init__", "__version__"}:
        return "vocabulary"  # (the package itself holds only its docstring and __version__)
    if parts[1] == "__main__":
        return "entry"
    return parts[1]


def imports_in(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in a module's source, resolved to absolute names."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = ".".join(package[:len(package) - child.level + 1]) if child.level else ""
                source_module = ".".join(p for p in (base, child.module or "") if p)
                # `from tui_trainer import ui` imports tui_trainer.ui: name each alias under its module.
                names = [f"{source_module}.{alias.name}" for alias in child.names]
            elif (isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)
                  and ast.unparse(child.func) in ("importlib.import_module", "import_module", "__import__")):
                names = [child.args[0].value]
            found.extend(Import(child.lineno, name, in_function, type_checking) for name in names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                  type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)))

    visit(ast.parse(source), False, False)
    return found


def violations_in(source: str, module: str, path: str, is_package: bool = False) -> list[str]:
    """One readable line per import that breaks the module's layer rule."""
    layer = layer_of_module(module)
    rule = RULES[layer]
    lazy = frozenset() if module in LAZY_MODULES else rule.lazy
    lines = []
    for imp in imports_in(source, module, is_package):
        top = imp.name.split(".")[0]
        target = layer_of_module(imp.name) if top == "tui_trainer" else top
        lazy_module = next((m for m in LAZY_MODULES if imp.name == m or imp.name.startswith(m + ".")), None)
        if lazy_module and not imp.in_function:
            allowed = False
        elif top == "tui_trainer":
            allowed = target in rule.may and (target not in lazy or imp.in_function)
        else:
            allowed = top not in rule.never and (top not in lazy or imp.in_function)
        if allowed:
            continue
        where = ("inside a function" if imp.in_function else
                 "for type checking" if imp.type_checking else "at import time")
        why = (f"{lazy_module} may be imported only inside a function" if lazy_module else
               f"{layer} may import {target} only inside a function" if target in lazy
               else f"{layer} never imports {target}")
        lines.append(f"{path}:{imp.line}: imports {imp.name} ({where}): {why}")
    return lines


def module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def all_violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, is_package = module_name(path)
        found += violations_in(path.read_text(encoding="utf-8"), module, str(path.relative_to(REPO)), is_package)
    return found


# -- the rules hold -------------------------------------------------------------------------------


def test_every_module_keeps_its_layers_rule():
    found = all_violations()
    new = [v for v in found if not any(v.startswith(f"{path}:") and (f"imports {name} " in v or f"imports {name}." in v)
                                       for path, name in KNOWN)]
    assert not new, "imports that break the layer rules (tui_trainer/<package>/__init__.py):\n" + "\n".join(new)


def test_every_package_has_a_rule():
    """A new folder under tui_trainer/ must say where it stands before anything in it is checked."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages - RULES.keys() == set(), "add the new package to RULES (and say it in its __init__ docstring)"
    for path in PACKAGE.rglob("*.py"):
        assert layer_of_module(module_name(path)[0]) in RULES, path


# -- the checker sees what it must (it can fail) --------------------------------------------------


@pytest.mark.parametrize("module, source, expected", [
    ("tui_trainer.engine.fake", "def f():\n    import textual\n",
     "tui_trainer/engine/fake.py:2: imports textual (inside a function): engine never imports textual"),
    ("tui_trainer.rundir.fake", "def f():\n    from ..ui.follow import event_from_record\n",
     "tui_trainer/rundir/fake.py:2: imports tui_trainer.ui.follow.event_from_record (inside a function): "
     "rundir never imports ui"),
    ("tui_trainer.analysis.fake", "import torch\n",
     "tui_trainer/analysis/fake.py:1: imports torch (at import time): analysis never imports torch"),
    ("tui_trainer.data.fake", "from tui_trainer import engine\n",
     "tui_trainer/data/fake.py:1: imports tui_trainer.engine (at import time): data never imports engine"),
    ("tui_trainer.events", "from tui_trainer.analysis.ema import BiasCorrectedEMA\n",
     "tui_trainer/events.py:1: imports tui_trainer.analysis.ema.BiasCorrectedEMA (at import time): "
     "vocabulary never imports analysis"),
    ("tui_trainer.cli.fake", "from tui_trainer.ui.factory import create_app\n",
     "tui_trainer/cli/fake.py:1: imports tui_trainer.ui.factory.create_app (at import time): "
     "cli may import ui only inside a function"),
    ("tui_trainer.model.fake", "import importlib\ndef f():\n    return importlib.import_module('textual.app')\n",
     "tui_trainer/model/fake.py:3: imports textual.app (inside a function): model never imports textual"),
    ("tui_trainer.cli.fake", "from tui_trainer.cli.serve_guard import Gate\n",
     "tui_trainer/cli/fake.py:1: imports tui_trainer.cli.serve_guard.Gate (at import time): "
     "tui_trainer.cli.serve_guard may be imported only inside a function"),
    ("tui_trainer.rundir.fake", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..engine import loop\n",
     "tui_trainer/rundir/fake.py:3: imports tui_trainer.engine.loop (for type checking): rundir never imports engine"),
])
def test_the_checker_names_a_forbidden_import_wherever_it_is_written(module, source, expected):
    path = module.replace(".", "/") + ".py"
    assert violations_in(source, module, path) == [expected]


def test_the_checker_lets_the_allowed_ones_pass():
    assert violations_in("def open_app():\n    from tui_trainer.ui.factory import create_app\n",
                         "tui_trainer.cli.fake", "cli/fake.py") == []
    assert violations_in("from . import checkpoints\nfrom tui_trainer.model.gpt import GPT\nimport torch\n",
                         "tui_trainer.rundir.fake", "rundir/fake.py") == []
    assert violations_in("from .errors import UserError\n", "tui_trainer.config", "config.py") == []


def test_a_headless_run_loads_no_textual(small_corpus, tmp_path):
    """At run time too: `--no-ui` trains and ends without Textual or the app in sys.modules."""
    args = ["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), "--epochs", "1",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
            "--accum", "1", "--threads", "1", "--limit-train-batches", "1", "--limit-val-batches", "1",
            "--sample-tokens", "0"]
    code = ("import sys; from tui_trainer.cli.main import main; code = main(sys.argv[1:]); "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(TEXTUAL)!r} "
            "or m.startswith('tui_trainer.ui')); print('loaded:', bad); sys.exit(3 if bad else code)")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "loaded: []" in result.stdout
