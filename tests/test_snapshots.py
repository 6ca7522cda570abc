"""Snapshots of the screen in fixed states: recorded events fed to the app with no engine.

The event stream is generated from a seeded formula shaped like a real run (fast fall,
then a slow one; val tracking train until it turns up), so the pictures never depend on
torch's numerics. The clock and the memory probe are fixed. Update with
``pytest tests/test_snapshots.py --snapshot-update`` and look at the SVGs before committing.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from tui_trainer.analysis.noise_scale import suggested_accum
from tui_trainer.events import (
    AccumChangeRequested,
    EpochEvent,
    MicroStep,
    Paused,
    RunEnded,
    RunStarted,
    StepEvent,
    ValidationProgress,
)
from tui_trainer.ui.factory import create_replay_app

RUN_DIR = "runs/20260101-120000"
MICRO_BATCH, ACCUM, BLOCK, EPOCHS, STEPS_PER_EPOCH = 16, 8, 128, 10, 60
TOKENS_PER_STEP = MICRO_BATCH * ACCUM * BLOCK


class FixedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def started() -> RunStarted:
    return RunStarted(run_dir=RUN_DIR, device="cpu", threads=2, parameters=4_812_864, vocab_size=65,
                      train_examples=7_680, val_examples=860, epochs=EPOCHS, micro_batch=MICRO_BATCH, accum=ACCUM,
                      processes=1, block_size=BLOCK, planned_tokens=EPOCHS * STEPS_PER_EPOCH * TOKENS_PER_STEP,
                      val_batches=-(-860 // MICRO_BATCH))


def recorded_epochs(epochs: int, overfit_from: int | None = None) -> list:
    """Step and epoch events for ``epochs`` whole epochs; val turns up from ``overfit_from``."""
    rng = random.Random(1234)
    events: list = []
    best, best_epoch, since_best = math.inf, 0, 0
    vals: list[float] = []
    for epoch in range(1, epochs + 1):
        losses = []
        for k in range(1, STEPS_PER_EPOCH + 1):
            step = (epoch - 1) * STEPS_PER_EPOCH + k
            loss = 1.35 + 2.85 * math.exp(-step / 35) + 0.25 * math.exp(-step / 400) + rng.gauss(0, 0.045)
            losses.append(loss)
            lr = 1e-3 * min(1.0, step / 30) * (0.55 + 0.45 * math.cos(math.pi * step / 600))
            events.append(StepEvent(epoch=epoch, step=step, step_in_epoch=k, steps_in_epoch=STEPS_PER_EPOCH,
                                    micro_steps=ACCUM, accum=ACCUM, micro_batch=MICRO_BATCH,
                                    effective_batch=MICRO_BATCH * ACCUM, tokens=TOKENS_PER_STEP, loss=loss, lr=lr,
                                    grad_norm=0.9 - 0.3 * step / 600, tokens_seen=step * TOKENS_PER_STEP,
                                    tokens_per_s=21_400 + 300 * math.sin(step)))
        train = sum(losses) / len(losses)
        val = train + 0.04 + (0.09 * (epoch - overfit_from + 1) if overfit_from and epoch >= overfit_from else 0)
        warning = None
        if vals and val > vals[-1] * 1.05:
            warning = (f"val loss rose {val / vals[-1] - 1:.1%} in one epoch "
                       f"({vals[-1]:.4f} -> {val:.4f}), more than 5%")
        vals.append(val)
        if val < best:
            best, best_epoch, since_best = val, epoch, 0
        else:
            since_best += 1
        if overfit_from and epoch >= overfit_from + 1:
            kind, reason = "overfitting", (f"val loss rose for 2 epochs while train fell: "
                                           f"val {vals[-2]:.2f} -> {val:.2f}")
        elif epoch < 3:
            kind, reason = "healthy", f"epoch {epoch}: train {train:.2f}, val {val:.2f}; a trend needs 3 epochs"
        else:
            kind, reason = "healthy", f"train and val loss both falling (val {vals[-3]:.2f} -> {val:.2f})"
        remedy = {"healthy": "keep training",
                  "overfitting": "more data or regularization (dropout, weight decay); early stopping"}[kind]
        events.append(EpochEvent(epoch=epoch, epochs=EPOCHS, train_loss=train, val_loss=val, accum=ACCUM,
                                 effective_batch=MICRO_BATCH * ACCUM,
                                 tokens_seen=epoch * STEPS_PER_EPOCH * TOKENS_PER_STEP, seconds=48.0, diagnosis=kind,
                                 diagnosis_reason=reason, remedy=remedy, val_rise_warning=warning, best_val_loss=best,
                                 best_epoch=best_epoch, epochs_without_improvement=since_best, tokens_per_s=21_400.0))
    return events


def mid_epoch(epoch: int, steps_done: int, micro_step: int) -> list:
    first = (epoch - 1) * STEPS_PER_EPOCH
    rng = random.Random(99)
    events = []
    for k in range(1, steps_done + 1):
        step = first + k
        loss = 1.35 + 2.85 * math.exp(-step / 35) + 0.25 * math.exp(-step / 400) + rng.gauss(0, 0.045)
        events.append(StepEvent(epoch=epoch, step=step, step_in_epoch=k, steps_in_epoch=STEPS_PER_EPOCH,
                                micro_steps=ACCUM, accum=ACCUM, micro_batch=MICRO_BATCH,
                                effective_batch=MICRO_BATCH * ACCUM, tokens=TOKENS_PER_STEP, loss=loss, lr=7.1e-4,
                                grad_norm=0.64, tokens_seen=step * TOKENS_PER_STEP, tokens_per_s=21_350.0))
    events.append(MicroStep(epoch=epoch, step=first + steps_done + 1, micro_step=micro_step, micro_steps=ACCUM,
                            step_in_epoch=steps_done + 1, steps_in_epoch=STEPS_PER_EPOCH))
    return events


def replay(events: list, elapsed: float = 754.0):
    """An app showing ``events``, ``elapsed`` seconds after the run started."""
    clock = FixedClock()
    app = create_replay_app(clock=clock, memory_probe=lambda device: "412 MB rss")

    async def run_before(pilot) -> None:
        app.feed(events[:1])  # RunStarted at t=0
        clock.now = elapsed
        app.feed(events[1:])
        app.tick()
        await pilot.pause()

    return app, run_before


def test_main_screen_mid_run_with_a_pending_accumulation_change(snap_compare):
    events = [started(), *recorded_epochs(3), *mid_epoch(4, 20, 5),
              AccumChangeRequested(old=8, new=16, epoch=4, step=200, applies_at_epoch=5)]
    app, run_before = replay(events)
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_help_screen(snap_compare):
    app, run_before = replay([started(), *recorded_epochs(3), *mid_epoch(4, 20, 5)])
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before, press=["question_mark"])


def test_wide_screen_after_early_stopping_on_overfitting(snap_compare):
    events = [started(), *recorded_epochs(7, overfit_from=5),
              RunEnded(reason="early_stop", epochs=7, steps=7 * STEPS_PER_EPOCH,
                       tokens_seen=7 * STEPS_PER_EPOCH * TOKENS_PER_STEP, best_val_loss=1.6, best_epoch=4,
                       message="no val-loss improvement for 3 epochs (best 1.6000 at epoch 4)")]
    app, run_before = replay(events, elapsed=2_912.0)
    assert snap_compare(app, terminal_size=(150, 40), run_before=run_before)


def test_error_panel_and_paused_state_at_60x20(snap_compare):
    events = [started(), *recorded_epochs(2), *mid_epoch(3, 7, 3), Paused(epoch=3, step=127),
              RunEnded(reason="error", epochs=2, steps=127, tokens_seen=127 * TOKENS_PER_STEP, best_val_loss=1.9,
                       best_epoch=2,
                       message="3 non-finite steps in a row at step 127: lower the learning rate (--lr 0.0001); "
                       "the last good checkpoint is intact")]
    app, run_before = replay(events, elapsed=301.0)
    assert snap_compare(app, terminal_size=(60, 20), run_before=run_before)


def with_noise_scale(events: list, settle_at_step: int = 40) -> list:
    """The same run, measuring the noise scale: it settles at ``settle_at_step`` and grows as the loss falls."""
    out = []
    for event in events:
        if isinstance(event, RunStarted):
            event = replace(event, noise_scale=True)
        elif isinstance(event, StepEvent) and event.step >= settle_at_step:
            scale = 150 + 0.8 * event.step
            event = replace(event, noise_scale=scale, suggested_accum=suggested_accum(scale, MICRO_BATCH))
        out.append(event)
    return out


def test_batch_panel_with_a_noise_scale_suggestion_taken_up_by_auto_accum(snap_compare):
    events = with_noise_scale([started(), *recorded_epochs(3), *mid_epoch(4, 20, 5)])
    events.append(AccumChangeRequested(old=8, new=16, epoch=4, step=200, applies_at_epoch=5, auto=True))
    app, run_before = replay(events)
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
def test_validation_pass_in_progress_at_80x24(snap_compare):
    # The epoch's last step is done (no micro-step after it); its validation pass is under way.
    events = [started(), *recorded_epochs(3), *mid_epoch(4, 60, 8)[:-1],
              ValidationProgress(epoch=4, batch=21, batches=54, seconds=9.5)]
    app, run_before = replay(events)
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_small_screen_60x20_mid_run_with_a_pending_accumulation_change(snap_compare):
    events = [started(), *recorded_epochs(3), *mid_epoch(4, 20, 5),
              AccumChangeRequested(old=8, new=16, epoch=4, step=200, applies_at_epoch=5)]
    app, run_before = replay(events)
    assert snap_compare(app, terminal_size=(60, 20), run_before=run_before)


def test_120x40_mid_run_gives_the_plot_the_room(snap_compare):
    events = [started(), *recorded_epochs(3), *mid_epoch(4, 20, 5)]
    app, run_before = replay(events)
    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)
