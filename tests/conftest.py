"""Shared fixtures: a small real corpus, the token cache in a temp dir. Helpers (the tiny model, a
run, a scripted sink, tmux) are in helpers.py: tests import them from there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CORPUS, tiny_config, tiny_flags, with_limits  # noqa: F401 (tiny_config, with_limits: test_trajectory_pinned.py, kept as it is)


@pytest.fixture(scope="session")
def token_cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def _token_cache_in_a_temp_dir(token_cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenized corpora go to a temp dir shared by the session (subprocesses inherit it), never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(token_cache_home))


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: a second thread only adds synchronisation. For a
    module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return CORPUS.read_text(encoding="utf-8")


@pytest.fixture
def small_corpus(tmp_path: Path, shakespeare_text: str) -> Path:
    """About 20 KB of real text: big enough for a few dozen windows, small enough to be quick."""
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, token_cache_home: Path, shakespeare_text: str) -> Path:
    """One short real run (1 epoch of the tiny model, 6 training and 2 validation batches), trained
    once a session for the tests that only read it. Copy it (``shutil.copytree``) before writing."""
    from tui_trainer.cli.main import main

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as patch:  # (set up before the per-test fixtures: say it here too)
        patch.setenv("XDG_CACHE_HOME", str(token_cache_home))
        assert main(["--no-ui", "--data", str(corpus), "--run-dir", str(run_dir), "--epochs", "1",
                     "--log-every", "off", *tiny_flags(6, 2)]) == 0
    return run_dir
