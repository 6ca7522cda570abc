"""Shared fixtures: a small real corpus, the token cache in a temp dir. Helpers (the tiny model, a
run, a scripted sink, tmux) are in helpers.py: tests import them from there."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CORPUS, tiny_config, with_limits  # noqa: F401 (tiny_config, with_limits: test_trajectory_pinned.py, kept as it is)


@pytest.fixture(scope="session")
def token_cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def _token_cache_in_a_temp_dir(token_cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenized corpora go to a temp dir shared by the session (subprocesses inherit it), never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(token_cache_home))


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return CORPUS.read_text(encoding="utf-8")


@pytest.fixture
def small_corpus(tmp_path: Path, shakespeare_text: str) -> Path:
    """About 20 KB of real text: big enough for a few dozen windows, small enough to be quick."""
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path
