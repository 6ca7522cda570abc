"""Shared fixtures: a small real corpus and tiny, fast run configurations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tui_trainer.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "datasets" / "tinyshakespeare.txt"


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


def tiny_config(data_path: Path | str, run_dir: Path | str, **train: object) -> RunConfig:
    """A model of a few thousand parameters on a short run: seconds, not minutes. In fp32 unless
    asked otherwise: the exactness tests (accumulation, trajectories, resume) are stated for fp32."""
    model = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, dropout=0.0)
    defaults = dict(epochs=2, micro_batch=4, accum=2, threads=1, patience=0, device="cpu", precision="fp32")
    defaults.update(train)
    return RunConfig(model=model, data=DataConfig(path=str(data_path), limit_val_batches=4),
                     optim=OptimConfig(lr=3e-3), train=TrainConfig(**defaults), run_dir=str(run_dir))


def with_limits(cfg: RunConfig, train_batches: int | None, val_batches: int | None = 4) -> RunConfig:
    return cfg.replace(data=replace(cfg.data, limit_train_batches=train_batches, limit_val_batches=val_batches))


def nan_loss_at(trainer, steps: set[int] | frozenset[int]) -> None:
    """Make the training loss NaN in the given optimizer steps (1-based, the run's count), from
    outside: the model's forward is wrapped, so the window's loss and its gradient are non-finite
    exactly as a diverging model's would be. Validation and sampling pass through untouched."""
    model = trainer.model
    forward = model.forward

    def poisoned(idx, targets=None):
        out = forward(idx, targets)
        if targets is not None and model.training and trainer.state.step + 1 in steps:
            return out * float("nan")
        return out

    model.forward = poisoned
