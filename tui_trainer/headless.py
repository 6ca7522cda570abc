"""The headless face: plain log lines on stdout (metrics.jsonl is written by the engine)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .events import (AccumChangeApplied, AccumChangeRequested, CheckpointFailed, CheckpointSaved, DiagnosisEvent,
                     EpochEvent,
                     Event, Notice, Paused, Resumed, RunEnded, RunStarted, StepEvent)

PROGRESS_INTERVAL_S = 2.0  # a progress line at most this often, and only on a terminal


class HeadlessLog:
    def __init__(self, out: TextIO | None = None, progress: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.progress = self.out.isatty() if progress is None else progress
        self._last_progress = 0.0
        self._epochs = 0

    def _print(self, text: str) -> None:
        if self.progress:
            self.out.write("\r\x1b[2K")  # clear the progress line before a log line
        self.out.write(text + "\n")
        self.out.flush()

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._epochs = event.epochs
            eff = event.micro_batch * event.accum * event.processes
            self._print(f"run {event.run_dir} device={event.device} threads={event.threads} "
                        f"precision={event.precision} "
                        f"params={event.parameters:,} vocab={event.vocab_size} "
                        f"train_examples={event.train_examples:,} val_examples={event.val_examples:,} "
                        f"effective_batch={eff} ({event.micro_batch}x{event.accum})")
            for note in event.notes:
                self._print(f"note: {note}")
        elif isinstance(event, StepEvent):
            now = time.monotonic()
            if self.progress and now - self._last_progress >= PROGRESS_INTERVAL_S:
                self._last_progress = now
                self.out.write(f"\r\x1b[2Kepoch {event.epoch}/{self._epochs} step {event.step_in_epoch}/"
                               f"{event.steps_in_epoch} loss={event.loss:.4f} lr={event.lr:.2e} "
                               f"tokens/s={event.tokens_per_s:,.0f}")
                self.out.flush()
        elif isinstance(event, EpochEvent):
            self._print(f"epoch {event.epoch}/{event.epochs} train_loss={event.train_loss:.4f} "
                        f"val_loss={event.val_loss:.4f} effective_batch={event.effective_batch} "
                        f"({event.effective_batch // event.accum}x{event.accum}) "
                        f"tokens/s={event.tokens_per_s:,.0f} "
                        f"diagnosis={event.diagnosis}: {event.diagnosis_reason}")
            if event.val_rise_warning:
                self._print(f"warning: {event.val_rise_warning}")
            if event.diagnosis != "healthy":
                self._print(f"remedy: {event.remedy}")
        elif isinstance(event, DiagnosisEvent):
            self._print(f"diagnosis={event.kind} at step {event.step}: {event.reason}; remedy: {event.remedy}")
        elif isinstance(event, AccumChangeRequested):
            self._print(f"accum {event.old} -> {event.new} requested at step {event.step}; "
                        f"applies at epoch {event.applies_at_epoch}")
        elif isinstance(event, AccumChangeApplied):
            self._print(f"accum {event.old} -> {event.new} applied at the start of epoch {event.epoch}")
        elif isinstance(event, Paused):
            self._print(f"paused at step {event.step}")
        elif isinstance(event, Resumed):
            self._print(f"resumed at step {event.step}")
        elif isinstance(event, CheckpointSaved):
            if event.kind == "best" or event.seconds > 1.0:
                self._print(f"saved {event.kind} checkpoint at step {event.step} ({event.seconds:.2f}s)")
        elif isinstance(event, CheckpointFailed):
            self._print(f"error: {event.message}; training continues, the previous checkpoint is intact")
        elif isinstance(event, Notice):
            self._print(f"{event.level}: {event.message}" if event.level != "info" else event.message)
        elif isinstance(event, RunEnded):
            best = f" best_val_loss={event.best_val_loss:.4f} (epoch {event.best_epoch})" if event.best_epoch else ""
            self._print(f"end reason={event.reason} epochs={event.epochs} steps={event.steps}{best}"
                        + (f": {event.message}" if event.message else ""))

