"""No file of the project carries a merge's conflict markers (a merge once committed docs/app.md
with both sides of a paragraph and the markers between them)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACES = ("tui_trainer", "tests", "docs", "benchmarks", "datasets", ".ci")
TOP_FILES = ("README.md", "pyproject.toml")
MARKER = re.compile(r"^(<{7}|>{7})( |$)|^={7}$", re.MULTILINE)


def project_files() -> list[Path]:
    found = [ROOT / name for name in TOP_FILES if (ROOT / name).is_file()]
    for place in PLACES:
        found += [path for path in (ROOT / place).rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and path.stat().st_size < 5_000_000]
    return found


def test_no_project_file_holds_conflict_markers():
    files = project_files()
    assert len(files) > 100  # (the walk found the project)
    marked = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        if path.name != Path(__file__).name and MARKER.search(text):
            marked.append(str(path.relative_to(ROOT)))
    assert marked == []


def test_the_marker_pattern_finds_each_kind_of_marker():
    for text in ("a\n<<<<<<< HEAD\nb", "=======\n", "x\n>>>>>>> branch\n"):
        assert MARKER.search(text), text
    for text in ("a <<<<<<< b", "========\n", "== title ==\n"):
        assert not MARKER.search(text), text
