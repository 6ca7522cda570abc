"""The headless face: plain log lines on stdout (metrics.jsonl is written by the engine).

Besides the run, epoch and end lines, a ``progress`` line every ``--log-every`` (30 s by
default, or every N optimizer steps) says where the run is, so a CI job that kills silent
jobs never mistakes a long first epoch for a hang. On a terminal a live line is redrawn in
place between them.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tui_trainer.analysis.diagnosis import REMEDIES
from tui_trainer.analysis.eta import EtaModel, SmoothedEta, duration
from tui_trainer.analysis.noise_scale import actionable, noise_error_words, noise_scale_words
from tui_trainer.config_checks import LogEvery
from tui_trainer.events import (
    AccumChangeApplied,
    AccumChangeRequested,
    CheckpointFailed,
    CheckpointSaved,
    DiagnosisEvent,
    EpochEvent,
    Event,
    MicroStep,
    Notice,
    Paused,
    Resumed,
    RunEnded,
    RunStarted,
    SampleEvent,
    StepEvent,
    ValidationProgress,
)

PLAIN_REMEDIES = (REMEDIES["healthy"], REMEDIES["learning"])
PROGRESS_INTERVAL_S = 2.0  # the live line (a terminal only) at most this often
DEFAULT_LOG_EVERY = LogEvery(seconds=30.0)
SAMPLE_LOG_CHARS = 120  # a text sample's share of its log line



class HeadlessLog:
    def __init__(self, out: TextIO | None = None, progress: bool | None = None,
                 log_every: LogEvery = DEFAULT_LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out or sys.stdout
        self.progress = self.out.isatty() if progress is None else progress
        self.log_every = log_every
        self.clock = clock
        self._last_progress = 0.0
        self._epochs = 0
        self._processes = 1  # (RunStarted says how many)
        self._memory_budget = 0  # bytes --micro-batch auto fitted into (RunStarted; 0 = none)
        self._started = clock()
        self._elapsed_before = 0.0
        self._paused_since: float | None = None
        self._paused_total = 0.0
        self._last_logged = self._started  # the last `progress` line (seconds mode)
        self._last_step_at = self._started  # the last optimizer step's end
        self._window_tokens, self._window_seconds = 0, 0.0  # tokens/s since the last progress line
        self._lr: float | None = None
        self._eta: EtaModel | None = None
        self._shown_eta = SmoothedEta()
        self._run_dir = ""
        self._init_from = ""  # (RunStarted says: the model a new run started from)
        self._budget_left: tuple[float, float] | None = None  # --time-budget: (seconds left, at this clock)
        self._tokens_per_epoch = 0

    # -- time ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self._elapsed_before + self.clock() - self._started

    def eta(self) -> float | None:
        if self._eta is None:
            return None
        now = self.clock()
        paused = self._paused_total + (now - self._paused_since if self._paused_since is not None else 0.0)
        return self._eta.shown(self._shown_eta, now - self._started - paused)

    def _due(self, step: int | None) -> bool:
        """A `progress` line now? Seconds mode: the interval has passed; steps mode: every N steps.

        ``step`` None = a line between steps (a micro-step, validation): due only when no step has
        ended for a whole interval either, so the step lines (loss, lr, tokens/s) come first."""
        if self.log_every.steps:
            return step is not None and step % self.log_every.steps == 0
        if not self.log_every.seconds:
            return False
        now = self.clock()
        since = self._last_logged if step is not None else max(self._last_logged, self._last_step_at)
        if now - since >= self.log_every.seconds:
            self._last_logged = now
            return True
        return False

    def _times(self) -> str:
        eta = self.eta()
        times = f"elapsed={duration(self.elapsed())} eta={'measuring' if eta is None else duration(eta)}"
        if self._budget_left is not None:
            left, at = self._budget_left
            since = 0.0 if self._paused_since is not None else self.clock() - at  # (a pause does not count)
            times += f" budget_left={duration(max(0.0, left - since))}"
        return times

    def _print(self, text: str) -> None:
        if self.progress:
            self.out.write("\r\x1b[2K")  # clear the progress line before a log line
        self.out.write(text + "\n")
        self.out.flush()

    def _print_sample(self, title: str, text: str) -> None:
        # One line, newlines escaped and the end cut, so the log keeps a line per thing that
        # happened; the whole text is in metrics.jsonl.
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.replace("\\", "\\\\"))
        if len(shown) > SAMPLE_LOG_CHARS:
            shown = shown[:SAMPLE_LOG_CHARS - 1] + "…"
        self._print(f"{title}: {shown}")

    def emit(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._run_started(event)
            case StepEvent():
                self._step(event)
            case MicroStep():
                # A slow optimizer step (the defaults on a small CPU: many seconds) is not silence either.
                if 1 < event.micro_step and not self.log_every.steps and self._due(None):
                    self._print(f"progress epoch {event.epoch}/{self._epochs} step {event.step_in_epoch - 1}/"
                                f"{event.steps_in_epoch}, micro-step {event.micro_step}/{event.micro_steps} of "
                                f"optimizer step {event.step} {self._times()}")
            case ValidationProgress():
                if self._eta is not None:
                    self._eta.validation(event.batch, event.batches, event.seconds)
                # A long validation pass is not silence either (steps mode: the steps' lines frame it).
                if 0 < event.batch < event.batches and not self.log_every.steps and self._due(None):
                    self._print(f"progress epoch {event.epoch}/{self._epochs} validating {event.batch}/"
                                f"{event.batches} {self._times()}")
            case EpochEvent():
                self._epoch(event)
            case SampleEvent():
                self._print_sample(f"sample at step {event.step}", event.text)
            case DiagnosisEvent():
                self._print(f"diagnosis={event.kind} at step {event.step}: {event.reason}; remedy: {event.remedy}")
            case AccumChangeRequested():
                who = "suggested by the noise scale" if event.auto else "requested"
                self._print(f"accum {event.old} -> {event.new} {who} at step {event.step}; "
                            f"applies at epoch {event.applies_at_epoch}")
            case AccumChangeApplied():
                self._print(f"accum {event.old} -> {event.new} applied at the start of epoch {event.epoch}")
            case Paused():
                self._paused_since = self.clock()
                self._print(f"paused at step {event.step}")
            case Resumed():
                if self._paused_since is not None:
                    self._paused_total += self.clock() - self._paused_since
                    self._paused_since = None
                self._print(f"resumed at step {event.step}")
            case CheckpointSaved():
                # An epoch's `latest` is quiet unless slow; one someone asked for is always confirmed.
                if event.kind == "best" or event.seconds > 1.0 or event.requested:
                    redo = event.redone_words()
                    self._print(event.saved_words() + (", as asked" if event.requested else "")
                                + (f"; {redo}" if redo else ""))
            case CheckpointFailed():
                self._print(f"error: {event.message}; training continues, the previous checkpoint is intact")
            case Notice():
                self._print(f"{event.level}: {event.message}" if event.level != "info" else event.message)
            case RunEnded():
                best = (f" best_val_loss={event.best_val_loss:.4f} (epoch {event.best_epoch})"
                        if event.best_epoch is not None else "")
                self._print(f"end reason={event.reason} epochs={event.epochs} steps={event.steps}{best}"
                            + (f": {event.message}" if event.message else ""))
                if self._run_dir and (next_step := event.next_step(self._run_dir)):
                    self._print(next_step)

    def _run_started(self, event: RunStarted) -> None:
        self._epochs = event.epochs
        self._run_dir = event.run_dir
        self._init_from = event.init_from
        self._tokens_per_epoch = event.train_examples * event.block_size
        if event.budget_left is not None:
            self._budget_left = (event.budget_left, self.clock())
        self._started = self._last_logged = self._last_step_at = self.clock()
        self._elapsed_before = event.elapsed_before
        self._eta = EtaModel(planned_tokens=event.planned_tokens, tokens_seen=event.tokens_seen,
                             epochs=event.epochs, epochs_done=event.start_epoch - 1, val_batches=event.val_batches,
                             micro_batch=event.micro_batch, block_size=event.block_size)
        self._print(f"run {event.run_dir} device={event.device} threads={event.threads} "
                    f"precision={event.precision} "
                    f"params={event.parameters:,} vocab={event.vocab_size} "
                    f"train_examples={event.train_examples:,} val_examples={event.val_examples:,} "
                    f"effective_batch={event.effective_batch} "
                    f"({batch_product(event.micro_batch, event.accum, event.processes)})"
                    + (f" split={event.split}" if event.split else "")
                    + (" checkpoint_activations=on" if event.checkpoint_activations else ""))
        self._processes = event.processes
        self._memory_budget = event.memory_budget
        for note in event.notes:
            self._print(f"note: {note}")

    def _step(self, event: StepEvent) -> None:
        self._lr = event.lr
        if event.budget_left is not None:
            self._budget_left = (event.budget_left, self.clock())
        if event.planned_tokens is not None and self._tokens_per_epoch:  # --time-budget: the plan so far
            self._epochs = max(1, -(-event.planned_tokens // self._tokens_per_epoch))
            if self._eta is not None:
                self._eta.planned_tokens, self._eta.epochs = event.planned_tokens, self._epochs
        if event.tokens_per_s > 0:
            seconds = event.tokens / event.tokens_per_s
            self._window_tokens += event.tokens
            self._window_seconds += seconds
            if self._eta is not None:
                self._eta.step(event.tokens, seconds, event.tokens_seen)
        self._last_step_at = self.clock()
        if self._due(event.step):
            tokens_per_s = self._window_tokens / self._window_seconds if self._window_seconds else 0.0
            self._window_tokens, self._window_seconds = 0, 0.0
            self._print(f"progress epoch {event.epoch}/{self._epochs} step {event.step_in_epoch}/"
                        f"{event.steps_in_epoch} (optimizer step {event.step}) loss={event.loss:.4f} "
                        f"lr={event.lr:.2e} tokens/s={tokens_per_s:,.0f}{flops_figure(event, tokens_per_s)}"
                        f"{self._memory(event)} {self._times()}")
        now = self.clock()
        if self.progress and now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.out.write(f"\r\x1b[2Kepoch {event.epoch}/{self._epochs} step {event.step_in_epoch}/"
                           f"{event.steps_in_epoch} loss={event.loss:.4f} lr={event.lr:.2e} "
                           f"tokens/s={event.tokens_per_s:,.0f}{self._memory(event)}")
            self.out.flush()

    def _memory(self, event: StepEvent) -> str:
        """`` memory=1.3/6.0GB``: the step's measured peak (against --micro-batch auto's budget)."""
        if not event.peak_memory:
            return ""
        budget = f"/{self._memory_budget / 1e9:,.1f}" if self._memory_budget else ""
        return f" memory={event.peak_memory / 1e9:,.1f}{budget}GB"

    def _epoch(self, event: EpochEvent) -> None:
        if self._eta is not None:
            self._eta.epoch_done(event.tokens_seen, training=not event.before_training)
        bpb = f" val_bpb={event.val_bpb:.4f}" if event.val_bpb is not None else ""
        if event.before_training:
            self._print(f"epoch 0/{event.epochs} val_loss={event.val_loss:.4f}{bpb} (before training, from "
                        f"{self._init_from or 'the starting weights'}) val_s={event.seconds:.1f}")
            if event.sample is not None:
                self._print_sample("sample before training", event.sample)
            return
        lr = f"lr={self._lr:.2e} " if self._lr is not None else ""
        self._print(f"epoch {event.epoch}/{event.epochs} train_loss={event.train_loss:.4f} "
                    f"val_loss={event.val_loss:.4f}{bpb} effective_batch={event.effective_batch} "
                    f"({batch_product(event.micro_batch, event.accum, self._processes)}) "
                    f"tokens/s={event.tokens_per_s:,.0f} {lr}epoch_s={event.seconds:.1f} {self._times()} "
                    f"diagnosis={event.diagnosis}: {event.diagnosis_reason}")
        if event.noise_scale is not None:
            # (in the screens' words and rounding: the log and the app must not read 56% and 55%)
            scale, error = noise_scale_words(event.noise_scale), noise_error_words(event.noise_scale_error)
            if event.noise_scale_error is None or actionable(event.noise_scale_error):
                self._print(f"noise scale ~{scale} sequences{error} -> suggests accum {event.suggested_accum}")
            else:
                self._print(f"noise scale ~{scale} sequences{error}: settling, no suggestion yet "
                            f"(it grows as the loss falls)")
        if event.val_rise_warning:
            self._print(f"warning: {event.val_rise_warning}")
        if event.remedy not in PLAIN_REMEDIES:  # "keep training" every epoch would be noise
            self._print(f"remedy: {event.remedy}")
        if event.sample is not None:
            self._print_sample(f"sample after epoch {event.epoch}", event.sample)

def flops_figure(event: StepEvent, tokens_per_s: float) -> str:
    """` mfu=41%` on a GPU whose peak is known, ` flops/s=3.2e+09` elsewhere (a CPU), at ``tokens_per_s``."""
    if event.flops_per_s is None or event.tokens_per_s <= 0 or tokens_per_s <= 0:
        return ""
    flops = tokens_per_s * event.flops_per_s / event.tokens_per_s
    if event.mfu is not None:
        return f" mfu={flops / (event.flops_per_s / event.mfu):.1%}"
    return f" flops/s={flops:.2e}"


def batch_product(micro_batch: int, accum: int, processes: int) -> str:
    """``16x8`` for one process (as it always read), ``micro-batch 8 x accum 4 x 2 processes`` for several."""
    if processes == 1:
        return f"{micro_batch}x{accum}"
    return f"micro-batch {micro_batch} x accum {accum} x {processes} processes"
