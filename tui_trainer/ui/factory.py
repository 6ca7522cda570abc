"""Building the app: ``create_app(cfg, ...)`` for a run (the CLI, the tests, the benchmarks)
builds the ``Trainer`` first, so bad input raises ``UserError`` before Textual owns the
terminal; ``create_replay_app(events)`` builds the same screen with no engine (snapshot tests,
demos)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from tui_trainer.control import Control
from tui_trainer.errors import UserError
from tui_trainer.events import FanOut
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.bridge import AppSink
from tui_trainer.ui.history import recorded_history
from tui_trainer.ui.threads import PassingBuild, in_passing_thread


def create_app(cfg, *, resume: str | None = None, overrides: dict[str, Any] | None = None,
               overwrite: bool = False, control: Control | None = None, in_background: bool = False,
               data_progress=None, extra_sink: Any = None) -> TrainerApp:
    """The app for a run. By default the Trainer is built (and validated) here, so bad input is a
    UserError before the app exists (tests, benchmarks). ``in_background`` (the CLI) shows the app
    first, with a "setting up" state, while a passing thread imports torch, reads the data and
    builds the model (seconds on a small CPU); bad input then closes the app and ``run_app``
    prints the same one line. A resumed run shows its history (the steps and epochs
    metrics.jsonl kept) from the engine's first frame. ``extra_sink`` also gets the engine's
    events (e.g. --tensorboard)."""
    control = control or Control()
    sink = AppSink()
    if data_progress is None:  # a big corpus takes a while: the screen shows how far it is, never frozen
        data_progress = partial(_data_preparing, sink)

    def build() -> tuple[Any, list]:
        from tui_trainer.engine.loop import Trainer  # imports torch: on the set-up thread too, when in the background

        engine_sink = FanOut(sink, extra_sink) if extra_sink is not None else sink
        trainer = Trainer(cfg, engine_sink, control, resume=resume, overrides=overrides, overwrite=overwrite, for_ui=True,
                          data_progress=data_progress)
        if trainer.state.epoch > trainer.cfg.train.epochs:  # the engine would refuse at once; say it now
            raise UserError(f"this run already finished {trainer.cfg.train.epochs} epochs",
                            "pass a larger --epochs to train longer")
        return trainer, recorded_history(trainer.run_dir) if resume is not None else []

    if in_background:
        return _as_configured(TrainerApp(None, sink, control=control, set_up=PassingBuild(build)), cfg, resume)
    trainer, history = in_passing_thread(build)
    app = TrainerApp(trainer, sink, replay=history)
    app.view.pending_accum = trainer.state.pending_accum  # a change asked for before the interruption
    return _as_configured(app, cfg, resume)


def _as_configured(app: TrainerApp, cfg, resume: str | None) -> TrainerApp:
    """The status line's run name and device label from the first frame, where the command line
    names them (a run dir given or resumed; a device other than ``auto``, which is known only once
    torch has looked): RunStarted brings what was chosen, and replaces them."""
    named = resume if resume is not None else cfg.run_dir
    if named:
        app.view.run_dir = str(named)
    train = cfg.train
    if train.device != "auto":
        app.view.device = train.device
        app.view.threads = train.threads or 0
        app.view.precision = train.precision if train.precision != "auto" else ""
    return app


def _data_preparing(sink: AppSink, progress: Any) -> None:
    """text_source's progress, as an event the app shows while it sets up (called on the set-up thread)."""
    from tui_trainer.events import DataPreparing

    sink.emit(DataPreparing(phase=progress.phase, fraction=progress.fraction, total_bytes=progress.total_bytes,
                            mb_per_s=progress.mb_per_s))


def create_replay_app(events: Iterable[Any] = (), **kwargs: Any) -> TrainerApp:
    """The same screen with no engine, showing recorded events (snapshot tests, demos)."""
    return TrainerApp(None, replay=events, **kwargs)
