"""What a cold trial found in the banner and the keys after a run's end, driven through the real
apps (Pilot) at 80x24 and 60x20: `g` (the last sample) offered once the run has ended, no promise
of a diagnosis from a run that stopped before its first validation, the diagnosis wrapping at 60
columns, start notes left out said so, and the viewer's ending line naming its q."""

from __future__ import annotations

import re
from dataclasses import replace

from screen import screen_text
from test_app_samples import with_samples
from test_snapshots import mid_epoch, recorded_epochs, replay, started
from test_view import recorded_run_dir

from tui_trainer.events import RunEnded
from tui_trainer.rundir.metrics import METRICS_FILE, MetricsWriter
from tui_trainer.ui.viewer import create_view_app
from tui_trainer.ui.widgets import HelpScreen
from tui_trainer.ui.widgets.samples import SamplesScreen

ENDED = RunEnded(reason="completed", epochs=3, steps=180, tokens_seen=1, best_val_loss=2.0, best_epoch=3)
STOPPED = RunEnded(reason="interrupted", epochs=0, steps=11, tokens_seen=1, best_val_loss=None,
                   best_epoch=None, message="stopped after optimizer step 11 (epoch 1); continue with --resume runs/x")
BUSY = ("the machine is busy: other processes use ~1.6 of its 2 cores while this run starts 2 threads; "
        "--threads 1 leaves them their cores (several times faster when cores are shared)")
BF16 = "bf16 on this CPU is slower than fp32 at this width (n_embd 32); --precision fp32 is faster"


def squashed(app) -> str:
    """The screen's words in a line: the banner's border (█) and the panels' (│) out, as rows wrap."""
    return re.sub(r"\s+", " ", re.sub(r"[█│]", " ", screen_text(app)))


def footer(app) -> str:
    return screen_text(app).splitlines()[-1]


def palette_titles(app) -> list[str]:
    return [command.title for command in app.get_system_commands(app.screen)]


async def test_g_is_offered_after_the_end_where_a_sample_exists():
    for size in ((80, 24), (60, 20)):
        app, run_before = replay(with_samples([started(), *recorded_epochs(3)]) + [ENDED])
        async with app.run_test(size=size) as pilot:
            await run_before(pilot)
            await pilot.pause()
            assert "g last sample" in footer(app), (size, footer(app))
            assert "Last text sample" in palette_titles(app)
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            assert "last text sample" in squashed(app), screen_text(app)
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("g")
            await pilot.pause()
            assert isinstance(app.screen, SamplesScreen)
            assert "new text: tui-trainer sample" in squashed(app)


async def test_g_is_not_offered_after_the_end_where_no_sample_exists():
    app, run_before = replay([started(), *recorded_epochs(3), ENDED])
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        assert "last sample" not in footer(app)
        assert "Last text sample" not in palette_titles(app)


def sampled_run_dir(tmp_path):
    run_dir = recorded_run_dir(tmp_path, epochs=2)  # its records rewritten with a sample on each epoch
    (run_dir / METRICS_FILE).unlink()
    writer = MetricsWriter(run_dir)
    events = with_samples([started(), *recorded_epochs(2)])[1:]
    for event in events:
        writer.emit(event)
    writer.emit(replace(ENDED, epochs=2, steps=120))
    writer.close()
    return run_dir


async def test_g_is_offered_in_the_viewer_of_a_finished_run_with_a_sample(tmp_path):
    app = create_view_app(sampled_run_dir(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.view.sample is not None
        assert "g last sample" in footer(app), footer(app)
        assert "Last text sample" in palette_titles(app)


async def test_a_run_stopped_before_its_first_validation_promises_no_diagnosis():
    for size in ((80, 24), (60, 20)):
        app, run_before = replay([started(), *mid_epoch(1, 11, 1), STOPPED])
        async with app.run_test(size=size) as pilot:
            await run_before(pilot)
            text = squashed(app)
            assert "stopped after optimizer step 11" in text, screen_text(app)
            banner = [row for row in screen_text(app).splitlines() if row.startswith("█")]
            assert len(banner) <= 3, (size, screen_text(app))  # (one row for the placeholder, even at 60)
            assert "appears after the first epoch" not in text, (size, screen_text(app))
            assert "no diagnosis: stopped before its first validation" in text, (size, screen_text(app))


async def test_the_diagnosis_wraps_at_60_columns():
    app, run_before = replay([started(), *recorded_epochs(1)])
    async with app.run_test(size=(60, 20)) as pilot:
        await run_before(pilot)
        reason = app.view.diagnosis_reason
        assert reason and "…" not in reason
        text = squashed(app)
        assert reason in text, (reason, screen_text(app))


async def test_start_notes_left_out_are_said_so():
    app, run_before = replay([replace(started(), notes=(BUSY, BF16)), *mid_epoch(1, 20, 5)])
    async with app.run_test(size=(60, 20)) as pilot:
        await run_before(pilot)
        text = squashed(app)
        assert "? lists them" in text and "? keeps them" not in text, screen_text(app)
        assert "bf16 on this CPU" in text or "+1 more: ? lists them" in text, screen_text(app)
        rows = screen_text(app).splitlines()
        assert len(rows) == 20 and all(len(row) <= 60 for row in rows)


async def test_the_viewer_of_a_finished_run_says_press_q_to_close(tmp_path):
    app = create_view_app(recorded_run_dir(tmp_path, epochs=6))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = squashed(app)
        assert "press q to close" in text and "press q to quit" not in text, screen_text(app)
        assert "q close" in footer(app)
    app, run_before = replay([started(), *recorded_epochs(3), ENDED])
    async with app.run_test(size=(80, 24)) as pilot:  # the trainer's q quits
        await run_before(pilot)
        assert "press q to quit" in squashed(app)
