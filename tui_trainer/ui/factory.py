"""Building the app: ``create_app(cfg, ...)`` for a run (the CLI, the tests, the benchmarks)
builds the ``Trainer`` first, so bad input raises ``UserError`` before Textual owns the
terminal; ``create_replay_app(events)`` builds the same screen with no engine (snapshot tests,
demos)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..control import Control
from ..errors import UserError
from .app import TrainerApp
from .bridge import AppSink
from .history import recorded_history
from .threads import in_passing_thread


def create_app(cfg, *, resume: str | None = None, overrides: dict[str, Any] | None = None,
               overwrite: bool = False, control: Control | None = None) -> TrainerApp:
    """The app the CLI runs. The Trainer is built (and validated) here, before the terminal is
    taken, so bad input is a one-line UserError, not a crash inside the app. A resumed run
    shows its history (the steps and epochs metrics.jsonl kept) from the first frame."""
    from ..loop import Trainer

    sink = AppSink()
    trainer = in_passing_thread(lambda: Trainer(cfg, sink, control or Control(), resume=resume,
                                                overrides=overrides, overwrite=overwrite, for_ui=True))
    if trainer.state.epoch > trainer.cfg.train.epochs:  # the engine would refuse at once; say it now
        raise UserError(f"this run already finished {trainer.cfg.train.epochs} epochs",
                        "pass a larger --epochs to train longer")
    history = recorded_history(trainer.run_dir) if resume is not None else []
    app = TrainerApp(trainer, sink, replay=history)
    app.view.pending_accum = trainer.state.pending_accum  # a change asked for before the interruption
    return app


def create_replay_app(events: Iterable[Any] = (), **kwargs: Any) -> TrainerApp:
    """The same screen with no engine, showing recorded events (snapshot tests, demos)."""
    return TrainerApp(None, replay=events, **kwargs)
