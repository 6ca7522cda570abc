"""Validation you can see: a capped pass in proportion to the training cap, progress events while
it runs, a `validating n/N` state on screen, and an ETA that counts the validation still to come."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from helpers import tiny_config, with_limits
from screen import screen_text
from test_snapshots import ACCUM, MICRO_BATCH, TOKENS_PER_STEP, FixedClock, mid_epoch, recorded_epochs, started

from tui_trainer.analysis.eta import FORWARD_SHARE, EtaModel
from tui_trainer.config import DataConfig
from tui_trainer.data.dataset import val_batch_limit
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.validation_progress import ValidationProgressEmitter
from tui_trainer.events import EpochEvent, ListSink, RunStarted, ValidationProgress
from tui_trainer.ui.factory import create_replay_app

# -- how much validation a capped run does -------------------------------------------------------

@pytest.mark.parametrize("train, val, split, expected", [
    (None, None, 0.1, None),  # no caps: the whole validation split
    (50, None, 0.1, 6),  # ceil(50 x 0.1 / 0.9) = ceil(5.56)
    (9, None, 0.1, 1),  # exactly 1.0: no rounding up past it
    (1, None, 0.1, 1),  # never less than one batch
    (30, None, 0.25, 10),
    (50, 3, 0.1, 3),  # --limit-val-batches always wins
    (None, 7, 0.1, 7),
])
def test_validation_is_capped_in_proportion_to_the_training_cap_unless_given(train, val, split, expected):
    cfg = DataConfig(val_split=split, limit_train_batches=train, limit_val_batches=val)
    assert val_batch_limit(cfg) == expected


def test_a_capped_run_validates_the_proportional_share_and_reports_its_progress(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 18, None)
    sink = ListSink()
    Trainer(cfg, sink).run()
    started_event = sink.of(RunStarted)[0]
    expected = math.ceil(18 * 0.1 / 0.9)  # 2 batches of 4 sequences
    assert started_event.val_examples == expected * cfg.train.micro_batch
    assert started_event.val_batches == expected  # carried, so no consumer derives it
    progress = sink.of(ValidationProgress)
    assert progress[0].batch == 0 and progress[-1].batch == progress[-1].batches == expected
    assert all(p.epoch == 1 for p in progress)
    # The pass comes between the epoch's last step and its epoch record.
    order = [type(e).__name__ for e in sink.events if type(e).__name__ in ("StepEvent", "ValidationProgress",
                                                                             "EpochEvent")]
    assert order.index("EpochEvent") > max(i for i, name in enumerate(order) if name == "ValidationProgress")
    assert max(i for i, name in enumerate(order) if name == "StepEvent") < order.index("ValidationProgress")


def test_explicit_val_limit_keeps_the_validation_losses_of_existing_runs(small_corpus, tmp_path):
    """A run that gives --limit-val-batches validates on exactly those batches, with or without
    the new default: its val losses are what they were."""
    base = with_limits(tiny_config(small_corpus, tmp_path / "a", epochs=1), 6, 4)
    first, second = ListSink(), ListSink()
    Trainer(base, first).run()
    Trainer(replace(base, run_dir=str(tmp_path / "b")), second).run()
    assert first.of(EpochEvent)[0].val_loss == second.of(EpochEvent)[0].val_loss
    assert first.of(ValidationProgress)[-1].batches == 4


def test_progress_is_throttled_when_batches_are_tiny():
    clock = FixedClock()
    sink = ListSink()
    emitter = ValidationProgressEmitter(sink, epoch=3, batches=1000, clock=clock)
    for batch in range(1, 1001):
        clock.now += 0.001  # a millisecond a batch: four events a second is all the screen can show
        emitter.batch_done(batch)
    batches = [e.batch for e in sink.of(ValidationProgress)]
    assert batches[0] == 0 and batches[-1] == 1000
    assert 4 <= len(batches) <= 6, batches  # 0, ~250, ~500, ~750, 1000
    assert sink.of(ValidationProgress)[-1].seconds == pytest.approx(1.0)


# -- the ETA ---------------------------------------------------------------------------------------

def _model(**overrides) -> EtaModel:
    settings = dict(planned_tokens=10_000, tokens_seen=0, epochs=2, epochs_done=0, val_batches=10,
                    micro_batch=4, block_size=25)  # a validation batch is 100 tokens
    settings.update(overrides)
    return EtaModel(**settings)


def test_eta_guesses_validation_from_training_pace_until_it_is_measured():
    eta = _model()
    eta.step(tokens=1000, seconds=1.0, tokens_seen=1000)  # 1 ms a token
    # 9,000 tokens left = 9 s; 2 passes of 10 batches of 100 tokens at a third of the training cost.
    expected = 9.0 + 20 * 100 * 0.001 * FORWARD_SHARE
    assert eta.eta(wall_seconds=1.0) == pytest.approx(expected)


def test_eta_counts_the_rest_of_a_validation_pass_at_its_measured_pace():
    eta = _model()
    eta.step(tokens=5000, seconds=5.0, tokens_seen=5000)  # epoch 1 trained
    eta.validation(batch=4, batches=10, seconds=2.0)  # 0.5 s a batch: slower than the guess
    # train: 5 s left; val: 6 batches of this pass + 10 of the next, at 0.5 s.
    assert eta.eta(wall_seconds=7.0) == pytest.approx(5.0 + 16 * 0.5)
    eta.validation(batch=10, batches=10, seconds=5.0)
    eta.epoch_done(tokens_seen=5000)
    assert eta.eta(wall_seconds=10.0) == pytest.approx(5.0 + 10 * 0.5)


def test_eta_scales_by_the_time_that_went_to_neither():
    eta = _model(epochs=1, val_batches=0)
    eta.step(tokens=1000, seconds=1.0, tokens_seen=1000)
    assert eta.eta(wall_seconds=2.0) == pytest.approx(2 * 9.0)  # half the wall time was saves and the app


# -- the screen ------------------------------------------------------------------------------------

async def test_validation_shows_a_validating_state_and_bar_then_goes_back_to_running():
    events = [started(), *recorded_epochs(2), *mid_epoch(3, 60, 8)]
    clock = FixedClock()
    app = create_replay_app(clock=clock, memory_probe=lambda device: "412 MB rss")
    async with app.run_test(size=(80, 24)) as pilot:
        app.feed(events)
        eta_training = app.view.eta(clock.now + 600)
        app.feed([ValidationProgress(epoch=3, batch=12, batches=54, seconds=3.0)])
        app.tick()
        await pilot.pause()
        text = screen_text(app)
        assert " validating " in text.splitlines()[0], text  # the status line
        assert "validating 12/54" in " ".join(text.split()), text
        assert app.view.eta(clock.now + 600) is not None
        app.feed([EpochEvent(epoch=3, epochs=10, train_loss=1.6, val_loss=1.65, accum=ACCUM,
                             effective_batch=MICRO_BATCH * ACCUM, tokens_seen=180 * TOKENS_PER_STEP, seconds=48.0,
                             diagnosis="healthy", diagnosis_reason="ok", remedy="keep training")])
        app.tick()
        await pilot.pause()
        text = screen_text(app)
        assert " running " in text.splitlines()[0] and "validating" not in text, text
    assert eta_training is not None

