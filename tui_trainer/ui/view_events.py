"""How the engine's events fold into a ``RunView`` (view.py): one function per event type, one
``match`` over them (``fold``). The app, the viewer and the tests call ``RunView.apply``."""

from __future__ import annotations

import math
import time

from tui_trainer.analysis.eta import EtaModel, SmoothedEta
from tui_trainer.events import (
    AccumChangeApplied,
    AccumChangeRequested,
    CheckpointFailed,
    CheckpointSaved,
    DataPreparing,
    DiagnosisEvent,
    EpochEvent,
    MicroStep,
    Paused,
    Resumed,
    RunEnded,
    RunStarted,
    SampleEvent,
    StepEvent,
    ValidationProgress,
)
from tui_trainer.ui.view import (
    END_STATES,
    FINISHED,
    PAUSED,
    RUNNING,
    STARTING,
    STOPPING,
    VALIDATING,
    EpochPoint,
    RunView,
    SampleShown,
)


def fold(view: RunView, event: object, now: float) -> None:
    """Fold one engine event into the view (the app's and the viewer's one place for it)."""
    match event:
        case DataPreparing():
            _data_preparing(view, event, now)
        case RunStarted():
            _run_started(view, event, now)
        case MicroStep():
            _micro_step(view, event, now)
        case StepEvent():
            _step(view, event, now)
        case ValidationProgress():
            _validation_progress(view, event, now)
        case EpochEvent():
            _epoch(view, event, now)
        case SampleEvent():
            _sample(view, event, now)
        case DiagnosisEvent():
            _diagnosis(view, event, now)
        case AccumChangeRequested():
            _accum_change_requested(view, event, now)
        case AccumChangeApplied():
            _accum_change_applied(view, event, now)
        case Paused():
            _paused(view, event, now)
        case Resumed():
            _resumed(view, event, now)
        case CheckpointSaved():
            _checkpoint_saved(view, event, now)
        case CheckpointFailed():
            _checkpoint_failed(view, event, now)
        case RunEnded():
            _run_ended(view, event, now)

def _data_preparing(view: RunView, e: DataPreparing, now: float) -> None:
    view.data_progress = (f"preparing the data: {e.phase} {min(e.fraction, 1.0):.0%} of "
                          f"{e.total_bytes / 1e6:,.1f} MB ({e.mb_per_s:,.1f} MB/s)")

def _run_started(view: RunView, e: RunStarted, now: float) -> None:
    view.started = True
    view.state = RUNNING if view.state == STARTING else view.state
    view.run_dir, view.device, view.threads, view.parameters = e.run_dir, e.device, e.threads, e.parameters
    view.precision = e.precision
    view.epochs, view.micro_batch, view.accum, view.processes = e.epochs, e.micro_batch, e.accum, e.processes
    view.block_size, view.planned_tokens = e.block_size, e.planned_tokens
    view.train_examples, view.time_budget, view.budget_left = e.train_examples, e.time_budget, e.budget_left
    view.tokens_seen = view.tokens_at_start = e.tokens_seen
    view.resumed_from_step = view.step = e.resumed_from_step
    view.epoch, view.notes = e.start_epoch, tuple(e.notes)
    view.resumed_at_epoch = e.start_epoch if e.resumed_from_step else None
    view.started_at, view.elapsed_before = now, e.elapsed_before
    view.sample_tokens = e.sample_tokens
    view.noise_scale_on = e.noise_scale
    view.val_batches = e.val_batches
    view.memory_budget = e.memory_budget
    view._eta = EtaModel(planned_tokens=e.planned_tokens, tokens_seen=e.tokens_seen, epochs=e.epochs,
                         epochs_done=e.start_epoch - 1, val_batches=view.val_batches,
                         micro_batch=e.micro_batch, block_size=e.block_size)
    # This session's pace only: an earlier session's tokens/s (replayed history) says nothing
    # about this machine now.
    view._throughput.clear()
    view._shown_eta = SmoothedEta()

def _micro_step(view: RunView, e: MicroStep, now: float) -> None:
    if e.step <= view.step:
        return  # the newest micro-step can trail a step event already shown
    _end_validation(view)
    view.epoch, view.micro_step, view.micro_steps = e.epoch, e.micro_step, e.micro_steps
    view.step_in_epoch, view.steps_in_epoch = e.step_in_epoch - 1, e.steps_in_epoch  # this step is not done yet

def _step(view: RunView, e: StepEvent, now: float) -> None:
    view.epoch, view.step = e.epoch, e.step
    view.step_in_epoch, view.steps_in_epoch = e.step_in_epoch, e.steps_in_epoch
    view.micro_step = view.micro_steps = e.micro_steps
    view.tokens_seen, view.lr, view.grad_norm = e.tokens_seen, e.lr, e.grad_norm
    view.accum = e.accum
    _run_clock(view, e, now)
    _budget_step(view, e, now)
    view.micro_batch = e.micro_batch or view.micro_batch  # (an out-of-memory halves it mid-run)
    view.peak_memory = e.peak_memory
    if not e.skipped:  # a skipped step measured nothing: the last estimate stands
        view.noise_scale, view.suggested_accum = e.noise_scale, e.suggested_accum
        view.noise_scale_error = e.noise_scale_error
    if e.tokens_per_s > 0:
        view._throughput.append((e.tokens, e.tokens / e.tokens_per_s))
        if e.flops_per_s is not None:
            view.flops_per_token = e.flops_per_s / e.tokens_per_s
            view.peak_flops = e.flops_per_s / e.mfu if e.mfu else None
        if view._eta is not None:
            view._eta.step(e.tokens, e.tokens / e.tokens_per_s, e.tokens_seen)
    if e.skipped or not math.isfinite(e.loss):
        view.skipped_steps += 1
    else:
        view.step_numbers.append(e.step)
        view.step_losses.append(e.loss)
        view.plot_version += 1

FRESH_STEP_S = 2.0  # a step record this recent says what the run's clock reads now


def _run_clock(view: RunView, e: StepEvent, now: float) -> None:
    """The elapsed time follows the run's own clock (the step's ``elapsed``) where it is ahead of the
    view's: a viewer opened before the run's first step started its clock late. Forward only (a
    clock never runs back), and only from a step just taken (history replayed is no word on now)."""
    if e.elapsed is None or e.unix_time is None or view.started_at is None or view.ended:
        return
    age = time.time() - e.unix_time
    if not (math.isfinite(e.elapsed) and 0.0 <= age < FRESH_STEP_S):
        return
    behind = e.elapsed + age - view.elapsed(now)
    if behind > 0.5:
        view.elapsed_before += behind


def _budget_step(view: RunView, e: StepEvent, now: float) -> None:
    """--time-budget: the seconds left, and the plan (its epochs and the ETA follow it)."""
    if e.budget_left is not None:
        view.budget_left, view.budget_left_at = e.budget_left, view.active_seconds(now)
    if e.planned_tokens is not None and view.train_examples and view.block_size:
        view.planned_tokens = e.planned_tokens
        view.epochs = max(1, -(-e.planned_tokens // (view.train_examples * view.block_size)))
        if view._eta is not None:
            view._eta.planned_tokens, view._eta.epochs = e.planned_tokens, view.epochs

def _validation_progress(view: RunView, e: ValidationProgress, now: float) -> None:
    view.val_batch, view.val_batches = e.batch, e.batches
    if view.state == RUNNING:
        view.state = VALIDATING
    if view._eta is not None:
        view._eta.validation(e.batch, e.batches, e.seconds)

def _end_validation(view: RunView) -> None:
    view.val_batch = None
    if view.state == VALIDATING:
        view.state = RUNNING

def _epoch(view: RunView, e: EpochEvent, now: float) -> None:
    _end_validation(view)
    if view._eta is not None:
        view._eta.epoch_done(e.tokens_seen, training=not e.before_training)
    view.epoch_points.append(EpochPoint(e.epoch, view.step, e.train_loss, e.val_loss))
    view.epoch_rows.append(e)
    view.plot_version += 1
    if not e.before_training:  # (epoch 0, before any step: no verdict yet)
        view.diagnosis, view.diagnosis_reason, view.remedy = e.diagnosis, e.diagnosis_reason, e.remedy
        view.val_rise_warning = e.val_rise_warning
    view.best_val_loss, view.best_epoch = e.best_val_loss, e.best_epoch
    view.epochs_without_improvement = e.epochs_without_improvement
    view.tokens_seen = e.tokens_seen
    if e.sample is not None:
        _show_sample(view, SampleShown(e.epoch, view.step, e.sample, asked=False))

def _sample(view: RunView, e: SampleEvent, now: float) -> None:
    view.sample_requested = False
    # It follows its step's StepEvent (or comes while paused after it): the view is at that step.
    here = view.step == e.step and view.epoch == e.epoch and view.steps_in_epoch > 0
    view.asked_sample = SampleShown(e.epoch, e.step, e.text, asked=True,
                                    step_in_epoch=view.step_in_epoch if here else None,
                                    steps_in_epoch=view.steps_in_epoch if here else None)
    _show_sample(view, view.asked_sample)

def _show_sample(view: RunView, sample: SampleShown) -> None:
    view.sample = sample
    view.sample_version += 1

def _diagnosis(view: RunView, e: DiagnosisEvent, now: float) -> None:  # a verdict between epochs (engine may not send it)
    view.diagnosis, view.diagnosis_reason, view.remedy = e.kind, e.reason, e.remedy

def _accum_change_requested(view: RunView, e: AccumChangeRequested, now: float) -> None:
    view.pending_accum = None if e.new == view.accum else e.new
    view.pending_auto = e.auto
    if view.requested_accum == e.new:
        view.requested_accum = None

def _accum_change_applied(view: RunView, e: AccumChangeApplied, now: float) -> None:
    view.accum, view.pending_accum = e.new, None
    if view.requested_accum == e.new:
        view.requested_accum = None
    view.epoch = e.epoch
    view.step_in_epoch = view.micro_step = 0

def _paused(view: RunView, e: Paused, now: float) -> None:
    if view.state not in (STOPPING, *END_STATES.values()):
        view.state = PAUSED
    view.pause_requested = None
    view.paused_since = now

def _resumed(view: RunView, e: Resumed, now: float) -> None:
    if view.state not in (STOPPING, *END_STATES.values()):
        view.state = RUNNING
    view.pause_requested = None
    _end_pause(view, now)

def _checkpoint_saved(view: RunView, e: CheckpointSaved, now: float) -> None:
    view.last_checkpoint_step, view.last_checkpoint_kind, view.last_checkpoint_at = e.step, e.kind, now
    view.checkpoint_error = None

def _checkpoint_failed(view: RunView, e: CheckpointFailed, now: float) -> None:
    view.checkpoint_error = e.message

def _run_ended(view: RunView, e: RunEnded, now: float) -> None:
    view.val_batch = None
    view.state = END_STATES.get(e.reason, FINISHED)
    view.end_reason, view.end_message = e.reason, e.message
    view.last_epoch_share = e.last_epoch_share
    view.best_val_loss, view.best_epoch = e.best_val_loss, e.best_epoch
    view.pause_requested = view.requested_accum = None
    view.sample_requested = False
    _end_pause(view, now)
    view.ended_at = now
    view.recorded_elapsed = e.elapsed_seconds

def _end_pause(view: RunView, now: float) -> None:
    if view.paused_since is not None:
        view.paused_total += now - view.paused_since
        view.paused_since = None

