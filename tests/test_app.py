"""The Textual app with the real engine on a tiny model: Pilot tests of what a user does.

Keys pressed while the engine is busy go through the driver (``send_key``), as a terminal
would deliver them: ``pilot.press`` waits for the whole process to go idle, which a
training thread never lets happen (see ECOSYSTEM.md). The engine is paused through
``app.control`` wherever a test needs a state that holds still.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import nan_loss_at, tiny_config, with_limits
from screen import screen_text
from test_snapshots import recorded_epochs, started
from textual import events

from tui_trainer.cli.faces import exit_code_for
from tui_trainer.engine.loop import Trainer
from tui_trainer.engine.precision import bf16_support
from tui_trainer.errors import UserError
from tui_trainer.events import CheckpointFailed, CheckpointSaved, EpochEvent, StepEvent
from tui_trainer.rundir.metrics import read_metrics
from tui_trainer.rundir.summary import read_summary
from tui_trainer.ui import format as fmt
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.bridge import AppSink
from tui_trainer.ui.factory import create_app, create_replay_app
from tui_trainer.ui.widgets import HelpScreen, LossPlot
from tui_trainer.ui.widgets.diagnosis import DiagnosisBanner

# -- helpers ---------------------------------------------------------------------------------------

def make_app(corpus: Path, run_dir: Path, train_batches: int = 40, **train) -> TrainerApp:
    cfg = with_limits(tiny_config(corpus, run_dir, **train), train_batches)
    return create_app(cfg)


async def wait_for(pilot, predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def send_key(app: TrainerApp, key: str) -> None:
    """Deliver a key the way the terminal driver does, without waiting for the app to go idle."""
    app._driver.send_message(events.Key(key, key if len(key) == 1 else None))


async def wait_for_text(pilot, app: TrainerApp, text: str, present: bool = True) -> None:
    """The screen shows ``text`` (or no longer does) within a few seconds."""
    await wait_for(pilot, lambda: (text in screen_text(app)) == present, timeout=5.0,
                   what=f"{text!r} {'on' if present else 'off'} screen")


def squashed(app: TrainerApp) -> str:
    """The screen with runs of spaces squeezed to one (columns move with the terminal width)."""
    return re.sub(r" +", " ", screen_text(app))


async def paused(pilot, app: TrainerApp) -> None:
    app.control.pause()
    await wait_for(pilot, lambda: app.view.state == "paused", what="the engine to pause")


def pause_after(app: TrainerApp, said: Callable[[Any], bool]) -> None:
    """The engine pauses itself right after the event ``said`` picks (asked on its own thread as it
    says it): a pause asked once the screen shows it can land steps later on a loaded machine."""
    emit = app.sink.emit

    def emitting(event) -> None:
        emit(event)
        if said(event):
            app.control.pause()

    app.sink.emit = emitting


@pytest.fixture
def apps():
    """Apps made by a test; their engines are stopped and joined whatever happens."""
    made: list[TrainerApp] = []
    yield made
    for app in made:
        app.engine.finish(timeout=30)


# -- starting, progress, plot ------------------------------------------------------------------------

async def test_app_starts_progress_moves_and_plot_gains_points(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=2)
    apps.append(app)
    app.control.pause()  # the engine does one micro-step, then holds still
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        await pilot.pause(0.15)  # a drain tick
        first = squashed(app)
        assert "micro-step 1/2" in first and "epoch 1/2" in first
        assert "effective batch 8 = micro-batch 4 x accum 2 (x 1 process)" in first
        assert app.view.step == 0

        pause_after(app, lambda e: isinstance(e, StepEvent) and e.step == 10)
        app.control.resume()
        await wait_for(pilot, lambda: app.view.step >= 10 and app.view.state == "paused", what="ten steps")
        await pilot.pause(0.5)  # a plot tick (3 Hz)
        plot = app.query_one(LossPlot)
        points_before = plot.points_drawn
        assert points_before >= 10
        steps_before = app.view.step
        assert f"{app.view.step_in_epoch}/20" in screen_text(app)

        app.control.resume()
        await wait_for(pilot, lambda: app.view.step >= steps_before + 5, what="more steps")
        await pilot.pause(0.5)
        assert plot.points_drawn > points_before
        assert any(ch in screen_text(app) for ch in "⠁⠂⠄⡀⢀⣀⠉⠒⠤")  # braille: the curve is drawn


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
async def test_the_header_says_which_precision_trains(precision, small_corpus, tmp_path, apps):
    if precision == "bf16" and not bf16_support(torch.device("cpu")).works:
        pytest.skip("this CPU has no oneDNN bf16")
    app = make_app(small_corpus, tmp_path / "run", precision=precision)
    apps.append(app)
    app.control.pause()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        await pilot.pause(0.15)
        assert f"cpux1 {precision}" in screen_text(app).splitlines()[0]


# -- accumulation keys ---------------------------------------------------------------------------

async def test_plus_twice_shows_pending_change_applied_exactly_at_next_epoch(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=2, train_batches=24)
    apps.append(app)
    app.control.pause()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        await pilot.press("plus", "plus")
        assert "accum 2 -> 8 at next epoch" in screen_text(app)  # at once, before the engine answers
        await wait_for(pilot, lambda: app.view.pending_accum == 8, what="the engine to confirm")
        await wait_for_text(pilot, app, "accum 2 -> 8 at next epoch (= 32 sequences)")  # confirmed
        app.control.resume()
        await wait_for(pilot, lambda: app.view.ended, what="the end of the run")
        await wait_for_text(pilot, app, "accum 2 -> 8", present=False)
        await wait_for_text(pilot, app, "micro-batch 4 x accum 8")
        # ended: the run's average pace, the figure `tui-trainer runs` gives it (not the last steps')
        average = read_summary(tmp_path / "run").tokens_per_s
        await wait_for_text(pilot, app, f"avg tok/s {fmt.count(average)}")
        assert "tokens/s" not in screen_text(app)
    end = app.engine.finish()
    assert end.reason == "completed"
    steps = [r for r in read_metrics(tmp_path / "run") if r["type"] == "step"]
    epoch1 = [s for s in steps if s["epoch"] == 1]
    epoch2 = [s for s in steps if s["epoch"] == 2]
    assert epoch1 and epoch2
    assert all(s["accum"] == 2 for s in epoch1)  # no step of the current epoch uses the new value
    assert epoch2[0]["accum"] == 8 and epoch2[0]["micro_steps"] == 8  # the first of the next one does
    assert all(s["accum"] == 8 for s in epoch2)


async def test_minus_and_brackets_halve_and_double_within_bounds(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", accum=2)
    apps.append(app)
    app.control.pause()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        await pilot.press("minus")
        assert app.view.target_accum == 1 and "accum 2 -> 1 at next epoch" in screen_text(app)
        await pilot.press("left_square_bracket")  # already at 1: nothing to send
        assert app.view.target_accum == 1
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert app.view.target_accum == 4
        await wait_for(pilot, lambda: app.view.pending_accum == 4, what="the engine to confirm")


# -- pause, save, stop ---------------------------------------------------------------------------

async def test_p_pauses_with_no_new_steps_and_resumes(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=500)  # q ends it: long enough never to finish
    apps.append(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.step >= 3, what="a few steps")
        send_key(app, "p")
        await wait_for(pilot, lambda: app.view.state == "paused", what="the pause")
        await wait_for_text(pilot, app, " paused ")
        step_at_pause = app.engine.trainer.state.step
        await pilot.pause(0.6)
        assert app.engine.trainer.state.step == step_at_pause  # the engine holds still
        assert app.view.step == step_at_pause
        send_key(app, "p")
        await wait_for(pilot, lambda: app.engine.trainer.state.step > step_at_pause + 2, what="steps after resuming")
        assert app.view.state == "running"
        send_key(app, "q")
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.engine.finish().reason == "interrupted"


async def test_s_saves_a_checkpoint_now(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=2)
    apps.append(app)
    app.control.pause()
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        assert not latest.exists()
        await pilot.press("s")
        # Paused, it saves at once: the last step taken (none yet), with the window to redo on resume.
        await wait_for(pilot, lambda: app.view.last_checkpoint_step is not None, what="the checkpoint")
        assert latest.exists() and app.view.last_checkpoint_step == 0 and app.view.state == "paused"
        await pilot.press("p")
        await wait_for(pilot, lambda: app.view.step >= 2, what="steps after the pause")
        await pilot.press("s")  # running, it saves after the step in progress
        await wait_for(pilot, lambda: (app.view.last_checkpoint_step or 0) >= 3, what="the second checkpoint")


@pytest.mark.parametrize("key, exit_signal, code", [("q", None, 0), ("ctrl+c", signal.SIGINT, 130)])
async def test_q_or_ctrl_c_stops_cleanly_saves_writes_end_record_and_exits(key, exit_signal, code, small_corpus,
                                                                             tmp_path, apps):
    # The app holds the terminal in raw mode: Ctrl-C comes as a key, not as SIGINT; it does what
    # SIGINT does, exit code 130 included.
    app = make_app(small_corpus, tmp_path / "run", epochs=20)
    apps.append(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.step >= 3, what="a few steps")
        send_key(app, key)
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit by itself")
    end = app.engine.finish(timeout=0)
    assert end is not None and end.reason == "interrupted" and end.exit_signal == exit_signal
    assert exit_code_for(end) == code
    records = read_metrics(tmp_path / "run")
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "interrupted"
    assert records[-1]["exit_signal"] == exit_signal
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()
    assert not app.engine.running
    assert app.summary_line().startswith("tui-trainer: stopped ")  # what the terminal keeps


async def test_second_q_while_stopping_exits_at_once(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=20)
    apps.append(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.step >= 1, what="a step")
        app.exit_when_ended = True  # as after a first q whose stop has not reached the engine yet
        app.view.request_stop()
        await wait_for_text(pilot, app, "stopping")
        send_key(app, "q")
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    end = app.engine.finish(timeout=30)  # still waits for the save: never a half-written run
    assert end.reason == "interrupted"
    assert read_metrics(tmp_path / "run")[-1]["type"] == "end"


async def test_signal_stop_saves_and_the_app_exits_by_itself(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=20)
    apps.append(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.step >= 2, what="a couple of steps")
        app.control.stop("interrupted", signal.SIGTERM)  # what signals.SignalStopper does on SIGTERM/SIGHUP
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    end = app.engine.finish(timeout=0)
    assert end.reason == "interrupted" and end.exit_signal == signal.SIGTERM
    assert read_metrics(tmp_path / "run")[-1]["type"] == "end"


async def test_finished_run_stays_open_until_q(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=1, train_batches=8)
    apps.append(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.ended, what="the end of the run")
        await wait_for_text(pilot, app, "finished the 1 epoch")
        await pilot.pause(0.3)
        assert app.is_running and " finished " in screen_text(app)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.engine.finish().reason == "completed"
    assert app.summary_line().startswith("tui-trainer: finished 1 epoch, ")


# -- errors --------------------------------------------------------------------------------------

async def test_engine_failure_becomes_an_error_panel_and_run_dir_keeps_the_steps(small_corpus, tmp_path, apps):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=2, max_bad_steps=2), 40)
    sink = AppSink()
    trainer = Trainer(cfg, sink, resume=None, for_ui=True)
    nan_loss_at(trainer, {4, 5})
    app = TrainerApp(trainer, sink)
    apps.append(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.ended, what="the failure")
        await wait_for_text(pilot, app, "training stopped with an error")
        await pilot.pause(0.3)
        assert app.is_running  # stays open showing the reason
        text = screen_text(app)
        assert "training stopped with an error" in text and " error " in text
        assert "non-finite" in text
    end = app.engine.finish()
    assert end.reason == "error"
    steps = [r for r in read_metrics(tmp_path / "run") if r["type"] == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]


def test_bad_input_raises_user_error_before_the_app_exists(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run")
    with pytest.raises(UserError, match="not divisible"):
        create_app(cfg.replace(model=replace(cfg.model, n_embd=33)))
    with pytest.raises(UserError, match="holds a run that stopped before its first checkpoint"):
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / ".tui-trainer-run").write_text('{"tool": "tui-trainer"}')  # a run of ours
        (tmp_path / "taken" / "config.json").write_text("{}")
        (tmp_path / "taken" / "metrics.jsonl").write_text('{"type": "step"}\n')
        create_app(tiny_config(small_corpus, tmp_path / "taken"))


def test_trainer_is_built_off_the_main_thread_on_a_thread_that_ends(small_corpus, tmp_path, monkeypatch):
    """Torch ops on the main thread (model init) leave it an OpenMP team that cost the app ~20%
    of its throughput beside the engine thread's own (benchmarks/ui_overhead.py)."""
    built_on = []
    original = Trainer.__init__

    def recording_init(self, *args, **kwargs):
        built_on.append(threading.current_thread())
        original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", recording_init)
    app = create_app(tiny_config(small_corpus, tmp_path / "run"))
    assert app.engine.trainer is not None and len(built_on) == 1
    assert built_on[0] is not threading.main_thread() and not built_on[0].is_alive()


# -- layout, help, palette -----------------------------------------------------------------------

async def test_renders_at_80x24_60x20_and_wide_and_redraws_on_resize(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=3, train_batches=16)
    apps.append(app)
    pause_after(app, lambda e: isinstance(e, EpochEvent))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(app.view.epoch_points) >= 1 and app.view.state == "paused",
                       what="an epoch, then the pause")
        await pilot.pause(0.5)
        for size in [(80, 24), (60, 20), (140, 45), (80, 24)]:
            await pilot.resize_terminal(*size)
            await pilot.pause(0.5)
            text = screen_text(app)
            lines = text.splitlines()
            assert len(lines) == size[1] and max(len(line) for line in lines) <= size[0]
            assert app.view.diagnosis == "learning"  # epoch 1 of a tiny model: still near chance, falling
            assert app.query_one(DiagnosisBanner).has_class("-learning")  # its own colour
            # (narrower, the device label keeps its place and the tool's name gives way)
            for must in ("tui-trainer" if size[0] >= 80 else "cpux1", "micro-step", "epoch", "tokens/s", "learning",
                         "q stop"):
                assert must in text, (size, must)
            assert "effective batch 8 = " in text, size  # the words, not only the product, at any size
            assert ("micro-batch 4 x accum 2" in text) or ("= 4 x 2" in text)
            assert app.query_one(LossPlot).size.height >= 4, size
        assert app.screen.has_class("-compact")
        await pilot.resize_terminal(140, 45)
        assert app.screen.has_class("-wide") and "verdict" in screen_text(app)  # the epoch table


async def test_help_screen_explains_accumulation_and_diagnoses(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run")
    apps.append(app)
    app.control.pause()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = " ".join(screen_text(app).replace("│", " ").split())  # undo the word wrap
        assert "effective batch = micro-batch x accum x processes" in text
        for verdict in ("learning", "healthy", "underfitting", "overfitting", "unstable"):
            assert verdict in text
        box, seen = app.screen.query_one("#help-box"), []  # the noise scale is a scroll away (the run's notes last)
        for _ in range(40):
            seen.append(" ".join(screen_text(app).replace("│", " ").split()))
            if box.scroll_y >= box.max_scroll_y:
                break
            box.scroll_to(y=box.scroll_y + 5, animate=False)
            await pilot.pause(0.05)
        text = " ".join(seen)
        assert "bigger wastes compute" in text and "smaller wastes steps" in text  # why the noise scale matters
        app.control.resume()  # training goes on under the help screen; the panels keep up
        await wait_for(pilot, lambda: app.view.step >= 5, what="steps under the help screen")
        send_key(app, "escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), what="the help to close")
        await wait_for(pilot, lambda: f"{app.view.step_in_epoch}/" in screen_text(app), what="the main screen")


async def test_command_palette_offers_every_action():
    app = TrainerApp()  # no engine: nothing to run
    async with app.run_test(size=(80, 24)):
        titles = {command.title for command in app.get_system_commands(app.screen)}
    for title in ("Accumulation x2", "Accumulation /2", "Pause / resume training", "Save checkpoint",
                  "Stop training", "Help"):
        assert title in titles


def test_every_binding_has_a_description():
    for binding in TrainerApp.BINDINGS:
        assert binding.description, binding.key


# -- the engine/UI line --------------------------------------------------------------------------

def test_sink_coalesces_micro_steps_and_keeps_every_step():
    from tui_trainer.events import MicroStep, StepEvent

    sink = AppSink()  # no app attached: nothing is posted, everything waits for a drain
    for step in range(1, 101):
        for micro in range(1, 9):
            sink.emit(MicroStep(epoch=1, step=step, micro_step=micro, micro_steps=8, step_in_epoch=step,
                                steps_in_epoch=100))
        sink.emit(StepEvent(epoch=1, step=step, step_in_epoch=step, steps_in_epoch=100, micro_steps=8, accum=8,
                            micro_batch=4, effective_batch=32, tokens=1024, loss=2.0, lr=1e-3, grad_norm=1.0,
                            tokens_seen=step * 1024, tokens_per_s=1e5))
    events_, micro = sink.drain()
    assert len(events_) == 100 and all(isinstance(e, StepEvent) for e in events_)
    # only the newest of 800
    assert micro == MicroStep(epoch=1, step=100, micro_step=8, micro_steps=8, step_in_epoch=100, steps_in_epoch=100)
    assert sink.drain()[0] == []


async def test_resumed_run_shows_its_history_and_pending_change(small_corpus, tmp_path, apps):
    first = make_app(small_corpus, tmp_path / "run", epochs=20, train_batches=16)
    apps.append(first)
    async with first.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(first.view.epoch_points) >= 1, what="an epoch")
        await paused(pilot, first)
        await pilot.press("plus")  # applies at the next epoch, after the interruption
        await wait_for(pilot, lambda: first.view.pending_accum == 4, what="the engine to confirm")
        await pilot.press("q")
        await wait_for(pilot, lambda: not first.is_running, what="the app to exit")
    end = first.engine.finish()
    epochs_done = len([r for r in read_metrics(tmp_path / "run") if r["type"] == "epoch"])
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=20), 16)
    second = create_app(cfg, resume=str(tmp_path / "run"))
    apps.append(second)
    second.control.pause()
    async with second.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: second.view.state == "paused", what="the first pause")
        assert second.view.step_numbers[:end.steps] == list(range(1, end.steps + 1))  # the plot goes on
        assert len(second.view.epoch_points) == epochs_done and second.view.diagnosis is not None
        await wait_for_text(pilot, second, "accum 2 -> 4 at next epoch")


async def test_banner_keeps_a_failed_save_in_view_until_a_save_works():
    """A toast goes after a few seconds; the banner line stays while the last save failed (the app
    waits on `s` for a run's final checkpoint) and goes with the next save that works."""
    app = create_replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.feed([started(), *recorded_epochs(2),
                  CheckpointFailed(kind="latest",
                                   message="could not save runs/x/checkpoints/latest.pt: No space left on device")])
        app.tick()
        await pilot.pause()
        await wait_for_text(pilot, app, "checkpoint not saved (No space left on device): free space, then s retries")
        app.feed([CheckpointSaved(kind="latest", path="runs/x/checkpoints/latest.pt", step=120, epoch=3, seconds=0.1)])
        app.tick()
        await wait_for_text(pilot, app, "checkpoint not saved", present=False)
