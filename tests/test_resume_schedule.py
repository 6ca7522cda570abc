"""A resume that moves the schedule's end (--epochs): the learning rate goes on from the rate it
had, or restarts at the peak when asked (--resume-schedule restart), and the run says which with
numbers — never the silent jump to where a schedule planned for the new end would stand."""

from __future__ import annotations

import math

import pytest
from test_resume import STEPS_PER_EPOCH, Script, resume_config, run_trainer

from tui_trainer.analysis.schedule import lr_at
from tui_trainer.config import RunConfig
from tui_trainer.events import RunStarted, StepEvent


def test_an_anchored_cosine_starts_at_its_rate_and_ends_at_the_floor():
    peak, floor, warmup, total = 1e-3, 1e-4, 100, 10_000
    anchor = (4_000, 6e-4)
    assert lr_at(4_000, peak, floor, warmup, total, anchor) == pytest.approx(6e-4)
    assert lr_at(total, peak, floor, warmup, total, anchor) == floor
    rates = [lr_at(t, peak, floor, warmup, total, anchor) for t in range(4_000, total, 500)]
    assert all(b < a for a, b in zip(rates, rates[1:]))
    # before the anchor the schedule is the one it had; without one, nothing changes
    assert lr_at(3_000, peak, floor, warmup, total, anchor) == lr_at(3_000, peak, floor, warmup, total)
    assert lr_at(50, peak, floor, warmup, total) == pytest.approx(peak * 51 / 101)


@pytest.mark.parametrize("mode", ["continue", "restart"])
def test_more_epochs_on_resume_go_on_from_the_rate_it_had_or_restart_at_the_peak(small_corpus, tmp_path, mode):
    run_dir = tmp_path / "run"
    first = Script(stop_at=("step", STEPS_PER_EPOCH + 2))
    run_trainer(resume_config(small_corpus, run_dir, epochs=2), first)
    last_lr = first.of(StepEvent)[-1].lr

    again = Script(stop_at=("step", STEPS_PER_EPOCH + 4))
    overrides = {"train.epochs": 6} | ({"optim.resume_schedule": "restart"} if mode == "restart" else {})
    trainer, _ = run_trainer(resume_config(small_corpus, run_dir, epochs=6, **{}), again, resume=run_dir,
                             overrides=overrides)
    notes = " ".join(again.of(RunStarted)[0].notes)
    next_lr = again.of(StepEvent)[0].lr
    peak = trainer.cfg.optim.lr
    if mode == "continue":
        assert "decays on from" in notes and "--resume-schedule restart" in notes, notes
        assert next_lr < last_lr and next_lr > 0.9 * last_lr  # one step further down the same curve
        planned = trainer.figures.planned_tokens()
        naive = lr_at(again.of(StepEvent)[0].tokens_seen, peak, peak * trainer.cfg.optim.min_lr_ratio,
                      trainer.figures.warmup_tokens(), planned)
        assert not math.isclose(next_lr, naive, rel_tol=0.01)  # not where the new end's curve would be
    else:
        assert "restarts at the peak" in notes, notes
        assert next_lr == pytest.approx(peak, rel=0.01)
    # the anchor is kept: a later resume with the same epochs changes nothing and says nothing
    third = Script(stop_at=("step", STEPS_PER_EPOCH + 5))
    run_trainer(resume_config(small_corpus, run_dir, epochs=6), third, resume=run_dir)
    assert "schedule's end" not in " ".join(third.of(RunStarted)[0].notes)
    assert third.of(StepEvent)[0].lr < again.of(StepEvent)[-1].lr


def test_a_bad_resume_schedule_is_one_line():
    from tui_trainer.config import OptimConfig
    from tui_trainer.config_checks import validate
    from tui_trainer.errors import UserError

    with pytest.raises(UserError) as error:
        validate(RunConfig(optim=OptimConfig(resume_schedule="jump")))
    assert "--resume-schedule" in error.value.one_line()


def test_a_finished_schedule_extended_says_it_stays_at_the_floor_and_how_to_climb_back():
    # (a cold trial read "decays on from 1.00e-04 ... reaching 1.00e-04": true, and saying nothing)
    from dataclasses import replace

    from tui_trainer.engine.figures import RunFigures, carried_schedule

    saved = RunConfig()
    now = RunFigures(replace_epochs(saved, saved.train.epochs * 2), train_windows=1_000, val_windows=100)
    before = RunFigures(saved, train_windows=1_000, val_windows=100)
    finished = before.planned_tokens()  # the old run's end: its lr at the floor
    anchor, note = carried_schedule(now, saved, finished)
    floor = saved.optim.lr * saved.optim.min_lr_ratio
    assert anchor == (finished, pytest.approx(floor))
    assert f"stays at its floor {floor:.2e}" in note and "--resume-schedule restart" in note
    assert replace(now, lr_anchor=anchor).lr_for(finished + 1) == pytest.approx(floor)


def replace_epochs(cfg: RunConfig, epochs: int) -> RunConfig:
    from dataclasses import replace

    return cfg.replace(train=replace(cfg.train, epochs=epochs))


def test_the_diagnosis_reads_the_rate_the_run_trains_at():
    from tui_trainer.analysis.diagnosis import SchedulePosition

    # a resume's anchor or a budget's plan put the run's rate elsewhere than the plain schedule's:
    # the remedy ("schedule in its tail (lr ...)") must name the run's own
    plain = SchedulePosition.at(9_000, 1e-3, 1e-4, 100, 10_000)
    told = SchedulePosition.at(9_000, 1e-3, 1e-4, 100, 10_000, lr=1e-4)
    assert plain.lr > 1.01e-4 and told.lr == 1e-4 and told.in_tail(0.75)


@pytest.mark.parametrize("stop_step", [3, STEPS_PER_EPOCH + 3])
def test_a_mid_epoch_resume_with_more_epochs_goes_on_numbering_the_epochs_steps(small_corpus, tmp_path, stop_step):
    """A run of 1 epoch stopped mid-epoch (or finished, then extended and stopped mid-epoch 2), resumed
    with --epochs 2 (3): step_in_epoch goes on from where it stopped, in the events and in
    metrics.jsonl, as the data position does (a cold newcomer trial reported it renumbering)."""
    from test_resume import records

    run_dir = tmp_path / "run"
    run_trainer(resume_config(small_corpus, run_dir, epochs=1), Script(stop_at=("step", min(stop_step, 3))))
    if stop_step > STEPS_PER_EPOCH:  # finish epoch 1, then extend to 2 and stop mid-epoch 2
        run_trainer(resume_config(small_corpus, run_dir, epochs=1), Script(), resume=run_dir)
        run_trainer(resume_config(small_corpus, run_dir, epochs=2), Script(stop_at=("step", stop_step)),
                    resume=run_dir, overrides={"train.epochs": 2})
    epochs = 2 if stop_step <= STEPS_PER_EPOCH else 3
    again = Script()
    run_trainer(resume_config(small_corpus, run_dir, epochs=epochs), again, resume=run_dir,
                overrides={"train.epochs": epochs})
    first = again.of(StepEvent)[0]
    assert (first.step, first.step_in_epoch) == (stop_step + 1, stop_step % STEPS_PER_EPOCH + 1)
    on_disk = records(run_dir, "step", ("epoch", "step", "step_in_epoch"))
    assert on_disk == [(1 + (s - 1) // STEPS_PER_EPOCH, s, (s - 1) % STEPS_PER_EPOCH + 1)
                       for s in range(1, epochs * STEPS_PER_EPOCH + 1)]
