"""Small defects a cold newcomer trial at 80x24 found, each driven through the real apps (Pilot):
a step shorter than the accumulation window, the samples screen after the
run's end, `?` in the compare view, a live viewer's footer at 80 columns, and where `m` is found."""

from __future__ import annotations

import re
from dataclasses import replace

from screen import screen_text
from test_app_samples import with_samples
from test_snapshots import recorded_epochs, replay, started
from test_view import recorded_run_dir

from tui_trainer.events import RunEnded, StepEvent
from tui_trainer.rundir.control_socket import RemoteControl
from tui_trainer.rundir.lock import RunLock
from tui_trainer.rundir.metrics import METRICS_FILE
from tui_trainer.ui.compare import create_compare_app
from tui_trainer.ui.follow import MetricsFollower
from tui_trainer.ui.viewer import ViewerApp
from tui_trainer.ui.widgets import HelpScreen

ENDED = RunEnded(reason="completed", epochs=3, steps=180, tokens_seen=1, best_val_loss=2.0, best_epoch=3)


def squashed(app) -> str:
    return re.sub(r" +", " ", screen_text(app))


def footer(app) -> str:
    return screen_text(app).splitlines()[-1]


async def test_an_epoch_shorter_than_one_window_shows_what_a_step_really_holds():
    # --accum 8 --limit-train-batches 1: one micro-batch of 16 an epoch, so each step holds 16, not 128.
    short = replace(started(), train_examples=16, epochs=3)
    step = StepEvent(epoch=1, step=1, step_in_epoch=1, steps_in_epoch=1, micro_steps=1, accum=8, micro_batch=16,
                     effective_batch=16, tokens=16 * 128, loss=4.0, lr=1e-3, grad_norm=1.0, tokens_seen=16 * 128,
                     tokens_per_s=1000.0)
    for size in ((80, 24), (60, 20), (120, 40)):
        app, run_before = replay([short, step])
        async with app.run_test(size=size) as pilot:
            await run_before(pilot)
            app.tick()
            await pilot.pause()
            text = squashed(app)
            assert "effective batch 16 " in text and "128" not in text.split("effective batch")[1][:40], (size, text)
    # A full window keeps the product.
    app, run_before = replay([started()])
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        assert "effective batch 128 = micro-batch 16 x accum 8" in squashed(app)


async def test_the_samples_screen_footer_offers_the_ended_runs_keys_once_it_ends():
    app, run_before = replay(with_samples([started(), *recorded_epochs(3)]))
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        await pilot.press("g")
        await pilot.pause()
        assert "pause/resume" in footer(app)  # live: the steering keys
        app.feed([ENDED])
        await pilot.pause()
        await pilot.pause()
        assert "q quit" in footer(app) and "pause/resume" not in footer(app) and "accum" not in footer(app)
        assert "g sample now" not in screen_text(app)  # (the screen's own line: g only says why now)


async def test_question_mark_opens_help_in_the_compare_view_and_the_footer_offers_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    app = create_compare_app([str(recorded_run_dir(tmp_path / "a", epochs=3)),
                              str(recorded_run_dir(tmp_path / "b", epochs=4))])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "? help" in footer(app)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = squashed(app)
        assert "close" in text and "Gradient accumulation" in text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


def live_viewer(tmp_path):
    """A viewer on a run that looks live: this process holds its lock; its socket never answers."""
    run_dir = recorded_run_dir(tmp_path, epochs=2)
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    (run_dir / METRICS_FILE).write_text("".join(line + "\n" for line in lines if '"type": "end"' not in line))
    lock = RunLock(run_dir)
    follower = MetricsFollower(run_dir)
    return ViewerApp(follower, follower.poll(), RemoteControl(tmp_path / "no-socket")), lock


async def test_a_live_viewers_footer_fits_every_key_at_80_columns(tmp_path):
    app, lock = live_viewer(tmp_path)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert not app.view.ended
            shown = footer(app)
            keys = ("q close", "^x stop run", "p pause/resume", "+- accum x2 /2", "s save", "? help")
            for words in keys:
                assert words in shown, shown
            for width in (72, 64, 60):  # narrower: every key down to 64; at 60 the last, ? help, gives way
                await pilot.resize_terminal(width, 24)
                await pilot.pause()
                shown = footer(app)
                assert all(words in shown for words in keys[:-1]) and ("? help" in shown) == (width >= 64), shown
            await pilot.resize_terminal(80, 24)
            await pilot.pause()
            app.feed([ENDED])  # over: two keys, and the palette hint has its room again
            await pilot.pause()
            await pilot.pause()
            assert "q close" in footer(app) and "^p palette" in footer(app) and "^x" not in footer(app)
    finally:
        lock.release()


async def test_m_is_named_on_the_plot_at_80x24_in_both_states():
    app, run_before = replay([started(), *recorded_epochs(2)])
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        assert "m raw" in screen_text(app).replace(":", "")
        await pilot.press("m")
        await pilot.pause()
        assert "m smooth" in screen_text(app).replace(":", "")
        # and the legend keeps every curve's name
        assert "val/epoch" in screen_text(app)


async def test_the_trainer_footer_keeps_every_key_at_80_columns():
    app, run_before = replay([started(), *recorded_epochs(1)])
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        for words in ("q stop", "p pause/resume", "+- accum x2 /2", "s save", "g sample", "? help"):
            assert words in footer(app)


