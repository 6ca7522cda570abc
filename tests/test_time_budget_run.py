"""--time-budget in a real run (engine/budget.py): the run ends within its budget with the LR at its
floor, the last epoch partial and validated; a pause is not counted; a resume keeps the plan; bad
input is one line, exit 2, nothing left.

The runs are real (a tiny model, real torch); only the clock is a fake one, injected from outside
into the modules that read it, and moved by the events the run emits: every optimizer step costs
``STEP_S`` seconds, every epoch's end (validation, sample, saves) ``EPOCH_END_S``. So the timing
is exact and the test deterministic on a loaded machine."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from helpers import tiny_config, with_limits

from tui_trainer.cli.main import main
from tui_trainer.engine import budget as budget_module
from tui_trainer.engine import loop as loop_module
from tui_trainer.engine import session as session_module
from tui_trainer.engine import steering as steering_module
from tui_trainer.engine.loop import Trainer
from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, Notice, Paused, Resumed, RunEnded, RunStarted, StepEvent
from tui_trainer.rundir.checkpoints import load_checkpoint

BUDGET_S = 30.0
STEP_S = 0.5
EPOCH_END_S = 1.0
TRAIN_BATCHES = 9  # micro-batches of 4 per epoch: 36 sequences, 4 full steps of 8 and one of 4


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    names = SimpleNamespace(monotonic=fake, perf_counter=fake)
    for module in (budget_module, loop_module, session_module, steering_module):
        monkeypatch.setattr(module, "time", names)
    return fake


class Recorder:
    """The run's events, and its cost on the fake clock."""

    def __init__(self, clock: FakeClock, control=None, pause_at_step: int | None = None,
                 stop_at_step: int | None = None, epoch_end_s: float = EPOCH_END_S,
                 slower_after_step: int | None = None, slower: float = 1.0) -> None:
        self.clock, self.control, self.epoch_end_s = clock, control, epoch_end_s
        self.pause_at_step, self.stop_at_step = pause_at_step, stop_at_step
        self.slower_after_step, self.slower, self.step_s = slower_after_step, slower, STEP_S
        self.events: list = []

    def emit(self, event) -> None:
        self.events.append(event)
        if isinstance(event, StepEvent):
            if event.step == self.slower_after_step:  # another process takes the cores: all work slows
                self.step_s, self.epoch_end_s = self.step_s * self.slower, self.epoch_end_s * self.slower
            self.clock.t += self.step_s  # the next step's time
            if event.step == self.pause_at_step:
                self.control.pause()
            if event.step == self.stop_at_step:
                self.control.stop()
        elif isinstance(event, EpochEvent):
            self.clock.t += self.epoch_end_s
        elif isinstance(event, Paused):  # a long pause (the clock moves while the loop waits), then on
            self.control.resume()
        elif isinstance(event, Resumed):
            self.clock.t += 1000.0

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def budget_config(small_corpus, tmp_path, **train):
    cfg = tiny_config(small_corpus, tmp_path / "run", time_budget=f"{BUDGET_S:g}s", epochs=10, sample_tokens=0,
                      **train)
    return with_limits(cfg, TRAIN_BATCHES)


def trained(cfg, clock, **recorder) -> tuple[Trainer, Recorder, float]:
    from tui_trainer.control import Control

    control = Control()
    sink = Recorder(clock, control, **recorder)
    begun = clock.t
    trainer = Trainer(cfg, sink, control)
    end = trainer.run()
    assert end.reason in ("completed", "interrupted"), end.message
    return trainer, sink, clock.t - begun


def test_a_budget_run_ends_within_it_at_the_lr_floor_with_a_partial_last_epoch_validated(small_corpus, tmp_path,
                                                                                          clock):
    cfg = budget_config(small_corpus, tmp_path)
    trainer, sink, spent = trained(cfg, clock)
    steps, epochs = sink.of(StepEvent), sink.of(EpochEvent)
    planned = trainer.session.budget.planner.planned_tokens
    # Within the budget, and not far short of it: the plan leaves less than one step and one
    # epoch's end unused (the fake pace is exact, so no other slack is needed).
    assert BUDGET_S - (STEP_S + EPOCH_END_S) <= spent <= BUDGET_S
    assert sink.of(RunEnded)[-1].reason == "completed"
    # The schedule decays to its floor exactly at the plan's end: the last step's LR is min_lr.
    assert steps[-1].tokens_seen == planned
    assert steps[-1].lr == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)
    assert steps[-2].lr > steps[-1].lr
    # Epochs are a consequence: the last one partial, ended like any other (validated, checkpointed).
    per_epoch = trainer.figures.examples_per_epoch() * cfg.model.block_size
    assert planned % per_epoch != 0
    assert len(epochs) == math.ceil(planned / per_epoch) == trainer.figures.epochs()
    assert epochs[-1].tokens_seen == planned and math.isfinite(epochs[-1].val_loss)
    assert epochs[-1].epochs == len(epochs)
    assert steps[-1].step_in_epoch < steps[-1].steps_in_epoch
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert saved["loop"]["tokens_seen"] == planned and saved["loop"]["example_cursor"] == 0
    # The plan is said once, and the status carries the budget left (counting down to about 0).
    plans = [n.message for n in sink.of(Notice) if n.message.startswith("time budget:")]
    assert len(plans) == 1 and "training tokens" in plans[0]
    assert sink.of(RunStarted)[0].time_budget == BUDGET_S
    lefts = [s.budget_left for s in steps]
    assert lefts == sorted(lefts, reverse=True) and lefts[-1] < STEP_S + EPOCH_END_S + 0.5
    first = next(i for i, s in enumerate(steps) if s.planned_tokens == planned)
    assert {s.planned_tokens for s in steps[first:]} == {planned}  # (the pace is steady: no re-plan)
    assert steps[first].tokens_seen >= 5.0 / STEP_S * 256  # after measuring 5 s of training (10 steps)


def test_a_machine_that_turns_busy_still_ends_within_the_budget(small_corpus, tmp_path, clock):
    # Everything runs 4x slower from step 24 (another process took the cores): the re-plan must
    # expect the epoch ends (validation, saves) to slow as much as the steps did, or the last
    # validation overruns the budget (measured: a 50 s budget ended at 103 s on a loaded box).
    cfg = with_limits(budget_config(small_corpus, tmp_path), 4 * TRAIN_BATCHES)  # one epoch end before it
    _, sink, spent = trained(cfg, clock, slower_after_step=24, slower=4.0)
    first_end = sink.events.index(sink.of(EpochEvent)[0])
    assert len(sink.of(EpochEvent)) >= 2 and max(e.step for e in sink.events[:first_end] if isinstance(e, StepEvent)) < 24
    assert any("re-planned" in n.message for n in sink.of(Notice))
    assert spent <= BUDGET_S + 4.0 * STEP_S  # (one slowed step of slack: the one the slow-down began in)


def test_a_few_slow_steps_neither_end_the_run_early_nor_leave_the_rate_above_its_floor(small_corpus, tmp_path,
                                                                                         clock):
    # A cold trial on a busy box: a pace reading of a few slow steps re-planned the run down to where it
    # stood, the run ended at once with 14 s of 45 left and its lr at 1.68e-3 (floor 4e-4).
    cfg = with_limits(budget_config(small_corpus, tmp_path), 4 * TRAIN_BATCHES)
    sink = Recorder(clock, slower_after_step=14, slower=25.0)
    from tui_trainer.control import Control

    sink.control = Control()
    original = sink.emit

    def emit(event):  # the slow spell lasts two steps, then the machine is as fast as before
        original(event)
        if isinstance(event, StepEvent) and event.step == 16:
            sink.step_s, sink.epoch_end_s = STEP_S, EPOCH_END_S

    sink.emit = emit
    begun = clock.t
    trainer = Trainer(cfg, sink, sink.control)
    assert trainer.run().reason == "completed"
    steps = sink.of(StepEvent)
    assert steps[-1].lr == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)  # the floor, at the end
    assert clock.t - begun >= 0.8 * BUDGET_S  # the budget used, not abandoned after the spell


def test_a_pause_does_not_count_against_the_budget(small_corpus, tmp_path, clock):
    cfg = budget_config(small_corpus, tmp_path)
    plain, plain_sink, plain_spent = trained(cfg, clock)
    cfg = budget_config(small_corpus, tmp_path / "paused")
    paused, sink, spent = trained(cfg, clock, pause_at_step=3)
    assert len(sink.of(Paused)) == 1
    assert spent == pytest.approx(plain_spent + 1000.0)  # the 1000 s pause, on top of the same run
    assert paused.state.tokens_seen == plain.state.tokens_seen
    assert sink.of(StepEvent)[-1].lr == plain_sink.of(StepEvent)[-1].lr


def test_a_resume_keeps_the_plan_and_the_time_used(small_corpus, tmp_path, clock):
    cfg = budget_config(small_corpus, tmp_path)
    _, sink, first_spent = trained(cfg, clock, stop_at_step=25)
    assert sink.of(RunEnded)[-1].reason == "interrupted"
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["loop"]["time_budget"]
    planned = saved["planned_tokens"]
    assert planned is not None and saved["used_seconds"] == pytest.approx(first_spent, abs=STEP_S)
    from tui_trainer.control import Control

    control = Control()
    resumed_sink = Recorder(clock, control)
    begun = clock.t
    second = Trainer(cfg, resumed_sink, control, resume=tmp_path / "run")
    assert second.run().reason == "completed"
    steps = resumed_sink.of(StepEvent)
    assert second.session.budget.planner.planned_tokens == planned  # no new plan at the same pace
    assert steps[-1].tokens_seen == planned
    assert steps[-1].lr == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)
    assert first_spent + (clock.t - begun) <= BUDGET_S + STEP_S  # (the stop's step is paid twice at most)
    assert not [n for n in resumed_sink.of(Notice) if "re-planned" in n.message]


def test_a_budget_too_short_for_one_step_after_the_start_up_leaves_nothing(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run", time_budget="0.001s")
    with pytest.raises(UserError) as error:
        Trainer(cfg)
    assert "too short" in error.value.message and "the start-up took" in error.value.message
    assert "--time-budget 0.001s is too short" in error.value.message  # (as given: it said "0s")
    assert "takes about 0.00 s" not in error.value.message  # (a fast step: its digits, not zeros)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "words"), [
    (["--time-budget", "10x"], "is not a duration"),
    (["--time-budget", "0s"], "not a positive duration"),
    (["--time-budget=-5m"], "is negative: a budget is positive"),
    (["--time-budget", "10m", "--epochs", "3"], "--time-budget and --epochs"),
    (["--time-budget", "0.001s"], "too short"),
])
def test_bad_budgets_are_one_line_exit_2_and_leave_no_run_dir(flags, words, small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--n-layer", "1",
                 "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--threads", "1", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert words in err and len(err.splitlines()) == 1
    assert not run_dir.exists()


def test_a_toml_budget_is_read_and_checked(small_corpus, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[train]\ntime_budget = "ten minutes"\n', encoding="utf-8")
    code = main(["train", "--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"),
                 "--config", str(config)])
    assert code == 2 and "is not a duration" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_finished_budget_run_is_not_resumed_and_a_damaged_plan_is_refused(small_corpus, tmp_path, clock):
    import torch

    cfg = budget_config(small_corpus, tmp_path)
    trained(cfg, clock)
    with pytest.raises(UserError) as error:
        Trainer(cfg, resume=tmp_path / "run")
    assert "already spent its time budget" in error.value.message
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    state["loop"]["time_budget"]["planned_tokens"] = -5
    torch.save(state, latest)
    with pytest.raises(UserError) as error:
        Trainer(cfg, resume=tmp_path / "run")
    assert "its time budget has planned_tokens -5" in error.value.message


def _budget_events():
    from dataclasses import replace as with_

    from test_headless_log import _started, _step

    started = _started(time_budget=60.0, budget_left=50.0, epochs=1, planned_tokens=320 * 32)
    plan = 3 * 320 * 32 // 2  # 1.5 epochs
    steps = [with_(_step(step), budget_left=50.0 - step, planned_tokens=plan if step >= 5 else None)
             for step in range(1, 11)]
    return started, steps, plan


def test_the_headless_lines_show_the_budget_left_and_the_planned_epochs():
    import io

    from test_headless_log import Clock

    from tui_trainer.cli.headless import HeadlessLog
    from tui_trainer.config_checks import LogEvery

    out, log_clock = io.StringIO(), Clock()
    log = HeadlessLog(out, progress=False, log_every=LogEvery(steps=5), clock=log_clock)
    started, steps, _ = _budget_events()
    log.emit(started)
    for step in steps:
        log_clock.now += 1.0
        log.emit(step)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("progress ")]
    assert lines[0].startswith("progress epoch 1/2 step 5/40") and "budget_left=0:00:45" in lines[0]
    assert "budget_left=0:00:40" in lines[1]


def test_the_app_view_counts_the_budget_down_and_follows_the_plan():
    from tui_trainer.ui.view import RunView

    view = RunView()
    started, steps, plan = _budget_events()
    view.apply(started, 0.0)
    assert view.budget_seconds_left(0.0) == 50.0 and view.epochs == 1
    for step in steps:
        view.apply(step, float(step.step))
    assert view.planned_tokens == plan and view.epochs == 2
    assert view.budget_seconds_left(10.0) == 40.0
    assert view.budget_seconds_left(13.0) == 37.0  # counted down between steps
    view.paused_since = 13.0
    assert view.budget_seconds_left(30.0) == 37.0  # ... not while paused
    assert RunView().budget_seconds_left(5.0) is None  # no budget: nothing shown


def test_epoch_ends_that_leave_no_time_to_train_are_said(small_corpus, tmp_path, clock):
    cfg = budget_config(small_corpus, tmp_path)
    _, sink, _ = trained(cfg, clock, epoch_end_s=20.0)  # a validation pass of 20 s in a 30 s budget
    warnings = [n.message for n in sink.of(Notice) if n.level == "warning"]
    assert any("this step is the last" in w and "--limit-val-batches" in w for w in warnings)
    assert sink.of(RunEnded)[-1].reason == "completed"


async def test_the_status_line_shows_the_budget_left_while_the_run_runs(small_corpus, tmp_path, clock):
    from screen import screen_text

    from tui_trainer.ui.viewer import create_view_app

    trained(budget_config(small_corpus, tmp_path), clock)
    app = create_view_app(tmp_path / "run", memory_probe=lambda device: "—")
    async with app.run_test(size=(150, 40)) as pilot:
        await pilot.pause()
        assert app.view.budget_left is not None  # (from the step records: the viewer has no RunStarted)
        assert "budget" not in screen_text(app).split("\n")[0]  # a finished run: nothing is left to count
        app.view.end_reason, app.view.ended_at = None, None  # the same view, as the run was still running
        app.view.state = "running"
        app.tick()  # (the status line is redrawn once a second: draw it now)
        await pilot.pause()
        status = " ".join(screen_text(app).split("\n")[0].split())
        assert "budget 0:00:0" in status and "left" in status
        assert "ETA" not in status  # (a cold trial saw "ETA 0:00:15  budget 0:00:17 left": two countdowns)
        await pilot.press("q")


@pytest.mark.parametrize(("flags", "accum", "lr"), [
    ([], 1, 4e-3),
    (["--accum", "4"], 4, 4e-3),
    (["--batch", "8", "--micro-batch", "4", "--lr", "2e-3"], 2, 2e-3),
])
def test_a_budget_run_takes_its_own_defaults_under_the_flags(flags, accum, lr, small_corpus, tmp_path, capsys):
    # (the defaults' figures: benchmarks/time_to_loss.py --levers; here what applies and what is said)
    run_dir = tmp_path / "run"
    code = main(["train", "--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--n-layer", "1",
                 "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--threads", "1", "--sample-tokens", "0",
                 "--time-budget", "2s", "--log-every", "off", *flags])
    out = capsys.readouterr().out
    assert code == 0, out
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert (saved["train"]["accum"], saved["optim"]["lr"]) == (accum, pytest.approx(lr))
    assert ("accum 1 (a step near the gradient noise scale" in out) == (not flags), out
    assert ("lr 0.004 (a short run of a model 128 wide or less" in out) == ("--lr" not in flags), out


def test_the_budget_defaults_never_override_what_is_given():
    from tui_trainer.analysis.time_budget import budget_defaults, budget_lr

    assert budget_defaults({}, 128) == {"train.accum": 1, "optim.lr": 4e-3}
    assert budget_defaults({}, 256) == {"train.accum": 1} and budget_lr(256) is None  # (wider: the plain lr)
    assert budget_defaults({"train.accum": 8, "optim.lr": 1e-3}, 128) == {}
    assert budget_defaults({"train.batch": 64, "model.init_from": "gpt2"}, 768) == {}  # (fine-tuning: its own lr)


def test_a_budget_run_ends_saying_its_budget_is_spent_and_where_in_the_last_epoch(small_corpus, tmp_path, clock):
    cfg = budget_config(small_corpus, tmp_path)
    trainer, sink, _ = trained(cfg, clock)
    end = sink.of(RunEnded)[-1]
    per_epoch = trainer.figures.examples_per_epoch() * cfg.model.block_size
    share = (end.tokens_seen - (end.epochs - 1) * per_epoch) / per_epoch
    assert 0 < share < 1 and end.last_epoch_share == pytest.approx(share)
    assert end.message == f"budget spent: ended {share:.0%} into epoch {end.epochs}"


def test_an_epochs_run_ends_with_no_budget_share(small_corpus, tmp_path):
    from helpers import train

    _, _, end = train(with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1, sample_tokens=0), 2))
    assert end.reason == "completed" and end.last_epoch_share is None and end.message == ""


async def test_the_finished_screen_of_a_budget_run_reads_complete_and_says_the_budget_is_spent(small_corpus, tmp_path,
                                                                                             clock):
    """At 80x24: no half-filled step bar left looking unfinished; the ending line says why it ended there."""
    from screen import screen_text

    from tui_trainer.ui.viewer import create_view_app

    _, sink, _ = trained(budget_config(small_corpus, tmp_path), clock)
    end = sink.of(RunEnded)[-1]
    app = create_view_app(tmp_path / "run", memory_probe=lambda device: "—")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = screen_text(app)
        progress = [line.split() for line in screen.splitlines()[1:4]]
        assert progress[1][:2] == ["budget", "spent"], screen
        assert progress[2][:2] == ["epoch", f"{end.epochs}/{end.epochs}"], screen
        assert f"■ budget spent: ended {end.last_epoch_share:.0%} into epoch {end.epochs}" in screen, screen
        assert "finished all" not in screen
        await pilot.press("q")


def test_the_line_the_terminal_keeps_says_the_budget_was_spent(tmp_path):
    from tui_trainer.ui.format import summary_line

    end = RunEnded(reason="completed", epochs=3, steps=40, tokens_seen=9000, best_val_loss=2.5, best_epoch=3,
                   message="budget spent: ended 62% into epoch 3", last_epoch_share=0.62)
    assert summary_line(end, tmp_path).startswith("tui-trainer: budget spent: ended 62% into epoch 3, 40 steps, best val")


def test_a_budget_counts_from_the_process_start_not_from_main():
    # The interpreter's start and torch's import are the user's seconds too (a 53 s budget's process
    # ran 57.9 s when the clock started in main): the clock reads the process's own start.
    import subprocess
    import sys

    probe = ("import time; time.sleep(1.0); from tui_trainer.cli.main import process_started; "
             "print(time.monotonic() - process_started())")
    waited = float(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert waited >= 1.0


def test_a_budget_spent_before_the_warm_up_would_end_never_says_warming_up_at_the_end(small_corpus, tmp_path, clock):
    # Steps of 3 s: the plan is 7 steps, fewer than the 10 steps' warm-up; the schedule still ends
    # at its floor with the plan, and the last verdict's remedy says so.
    cfg = budget_config(small_corpus, tmp_path)
    trainer, sink, _ = trained(cfg, clock, slower_after_step=1, slower=6.0)
    steps, epochs = sink.of(StepEvent), sink.of(EpochEvent)
    assert steps[-1].tokens_seen < trainer.figures.warmup_tokens()  # (the premise: the plan ended inside it)
    assert steps[-1].lr == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)
    assert "warming up" not in epochs[-1].remedy, epochs[-1].remedy


@pytest.mark.parametrize(("given", "said"), [("2", True), ("2s", False)])
def test_a_bare_number_budget_is_said_to_be_seconds(given, said, small_corpus, tmp_path, capsys):
    """`--time-budget 10` may have meant minutes: a cold trial ran 9 s with nothing said."""
    code = main(["train", "--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "run"), "--n-layer",
                 "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--threads", "1", "--sample-tokens",
                 "0", "--time-budget", given, "--log-every", "off"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert ("--time-budget 2 is read as 2 seconds (write 2m for minutes" in out) == said, out
