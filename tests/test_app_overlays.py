"""What covered the run's numbers in a cold newcomer trial at 80x24 and 60x20, driven through the
real apps (Pilot): the start notes' toast (now the banner's, before the first diagnosis, and the
help's), `g` after the end (a line in the samples screen, not a toast that says "no sample"), the
paused save's two toasts (one replaces the other), the noise scale after the end, the status line's
device label and busy hint, and the finished run's viewer palette."""

from __future__ import annotations

import re
from dataclasses import replace

from screen import screen_text
from test_app_samples import with_samples
from test_snapshots import mid_epoch, recorded_epochs, replay, started, with_noise_scale
from test_view import recorded_run_dir
from textual.widgets._toast import Toast

from tui_trainer.events import CheckpointSaved, Paused, RunEnded, StepEvent
from tui_trainer.ui.viewer import create_view_app
from tui_trainer.ui.widgets import HelpScreen, StatsPanel
from tui_trainer.ui.widgets.samples import SamplesScreen

BUSY = ("the machine is busy: other processes use ~1.6 of its 2 cores while this run starts 2 threads; "
        "--threads 1 leaves them their cores (several times faster when cores are shared)")
BF16 = "bf16 on this CPU is slower than fp32 at this width (n_embd 32); --precision fp32 is faster"
NOTES = (BUSY, BF16)
ENDED = RunEnded(reason="completed", epochs=3, steps=180, tokens_seen=1, best_val_loss=2.0, best_epoch=3)


def squashed(app) -> str:
    return re.sub(r"\s+", " ", screen_text(app))


def toasts(app) -> list:
    return list(app.screen.query(Toast))


async def test_the_start_notes_cover_nothing_and_read_in_the_banner_until_the_first_diagnosis():
    for size in ((80, 24), (60, 20)):
        events = [replace(started(), notes=NOTES), *mid_epoch(1, 20, 5)]
        app, run_before = replay(events)
        async with app.run_test(size=size, notifications=True) as pilot:
            await run_before(pilot)
            await pilot.pause(0.3)
            assert toasts(app) == [], size  # nothing over the stats, the batch line or the footer
            text = squashed(app)
            assert "machine is busy" in text and "? lists them" in text, (size, screen_text(app))
            if size == (80, 24):  # (60x20 gives them 4 rows, the plot keeps the rest: `?` has every note)
                assert "bf16 on this CPU" in text, screen_text(app)
            assert "tokens/s" in text and "grad norm" in text, size
            stats = app.main_screen.query_one(StatsPanel).region
            assert stats.width > 0
            # every note's row fits the screen: nothing runs off it
            rows = screen_text(app).splitlines()
            assert len(rows) == size[1] and all(len(row) <= size[0] for row in rows), size
            # the first diagnosis takes the banner back; the notes stay a key away (`?`)
            app.feed(recorded_epochs(1)[-1:])
            await pilot.pause()
            assert "machine is busy" not in squashed(app), size
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            assert "run notes at the end" in squashed(app), (size, screen_text(app))
            app.screen.query_one("#help-box").scroll_end(animate=False)
            await pilot.pause(0.1)
            help_text = squashed(app)
            assert "Notes on this run" in help_text and "machine is busy" in help_text, (size, screen_text(app))


async def test_the_help_has_no_notes_section_where_the_run_had_none():
    app, run_before = replay([started(), *recorded_epochs(1)])
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert "Notes on this run" not in squashed(app)


async def test_g_after_the_end_shows_the_last_sample_with_a_line_and_no_toast():
    app, run_before = replay(with_samples([started(), *recorded_epochs(3)]) + [ENDED])
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await run_before(pilot)
        await pilot.press("g")
        await pilot.pause(0.3)
        assert isinstance(app.screen, SamplesScreen)
        assert toasts(app) == [] and not app._notifications
        text = squashed(app)
        assert "no sample" not in text and "after epoch 3" in text
        assert "new text: tui-trainer sample" in text, screen_text(app)


async def test_g_in_the_viewer_of_a_finished_run_shows_the_line_in_the_samples_screen(tmp_path):
    app = create_view_app(recorded_run_dir(tmp_path, epochs=2))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.pause()
        await pilot.press("g")
        await pilot.pause(0.3)
        assert isinstance(app.screen, SamplesScreen)
        assert toasts(app) == [] and not app._notifications
        assert "new text: tui-trainer sample" in squashed(app), screen_text(app)  # (this run wrote none)


async def test_a_save_while_paused_is_one_short_toast_at_a_time():
    app, run_before = replay([started(), *recorded_epochs(1), *mid_epoch(2, 5, 2), Paused(epoch=2, step=65)])
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await run_before(pilot)
        assert app.view.state == "paused"
        await pilot.press("s")
        await pilot.pause()
        assert [n.message for n in app._notifications] == ["saving a checkpoint now (paused)…"]
        # (the engine's answer to `s`: a save someone asked for)
        app.feed([CheckpointSaved(kind="latest", path="x", step=65, epoch=2, seconds=0.2, requested=True,
                                  redone_micro_steps=2)])
        await pilot.pause(0.3)
        shown = [n.message for n in app._notifications]
        assert len(shown) == 1 and shown[0].startswith("saved latest checkpoint"), shown
        # paused 2 micro-steps into step 66: the checkpoint holds step 65, and a resume redoes 66
        assert shown[0].endswith("; a resume redoes step 66 (2 micro-steps in)"), shown
        assert all(n.timeout <= 4 for n in app._notifications)
        assert len(toasts(app)) == 1


async def test_after_the_end_the_noise_scale_reads_as_a_final_figure():
    def unsure(events):
        return [replace(e, noise_scale_error=0.4) if isinstance(e, StepEvent) and e.noise_scale is not None else e
                for e in events]

    events = unsure(with_noise_scale([started(), *recorded_epochs(1)], settle_at_step=10))
    for size in ((80, 24), (60, 20)):
        app, run_before = replay(events + [replace(ENDED, epochs=1, steps=60)])
        async with app.run_test(size=size) as pilot:
            await run_before(pilot)
            text = squashed(app)
            assert "settling" not in text and "±40% at the end" in text, (size, screen_text(app))


def status(app) -> str:
    return screen_text(app).splitlines()[0]


async def test_the_device_label_stays_on_the_status_line_while_measuring_and_stopping():
    busy = replace(started(), notes=(BUSY,), precision="bf16")
    app, run_before = replay([replace(busy, run_dir="runs/tryrun2"), *mid_epoch(1, 2, 1)], elapsed=3.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        line = status(app)
        assert "measuring" in line and "cpux2 bf16" in line and "busy: try --threads 1" in line, line
    # a run named for its start time (15 characters): the advice gives way to the device, not the other way
    app, run_before = replay([busy, *mid_epoch(1, 2, 1)], elapsed=3.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await run_before(pilot)
        line = status(app)
        assert "measuring" in line and "cpux2 bf16" in line and "busy" in line, line
        app.view.request_stop()
        app.tick()
        await pilot.pause()
        line = status(app)
        assert "stopping" in line and "cpux2 bf16" in line and "busy" in line, line
    app, run_before = replay([busy, *mid_epoch(1, 2, 1)], elapsed=3.0)
    async with app.run_test(size=(60, 20)) as pilot:  # no room for the device here: the time and the ETA stay
        await run_before(pilot)
        assert "0:00:03" in status(app) and "ETA measuring…" in status(app), status(app)
    # a long name at 60 columns: cut, not gone (the line began with blanks: which run was it?)
    app, run_before = replay([replace(busy, run_dir="runs/a-rather-long-run-name-here"), *mid_epoch(1, 2, 1)],
                             elapsed=3.0)
    async with app.run_test(size=(60, 20)) as pilot:
        await run_before(pilot)
        line = status(app)
        assert line.startswith(" a-rather-long") and "…" in line and "ETA measuring…" in line, line


def test_a_run_dir_named_dot_shows_the_folders_own_name(tmp_path, monkeypatch):
    from tui_trainer.ui.view import RunView

    (tmp_path / "myrun" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "myrun")
    assert RunView(run_dir=".").run_name == "myrun" and RunView(run_dir="sub/..").run_name == "myrun"
    assert RunView(run_dir="runs/r1/").run_name == "r1" and RunView().run_name == "—"


async def test_the_status_line_shows_the_configured_device_before_the_run_starts(tmp_path):
    from helpers import CORPUS, tiny_config

    from tui_trainer.ui.factory import create_app

    cfg = tiny_config(CORPUS, tmp_path / "run", precision="fp32", threads=1)
    app = create_app(cfg, in_background=True)
    assert app.view.device == "cpu" and app.view.threads == 1 and app.view.precision == "fp32"


async def test_the_viewer_shows_the_runs_precision(tmp_path):
    import json

    from tui_trainer.rundir.files import CONFIG_FILE

    run_dir = recorded_run_dir(tmp_path, epochs=2)
    record = json.loads((run_dir / CONFIG_FILE).read_text())
    (run_dir / CONFIG_FILE).write_text(json.dumps({**record, "precision": "bf16"}))
    app = create_view_app(run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "cpux2 bf16" in status(app), status(app)


async def test_the_palette_of_a_finished_runs_viewer_does_not_say_the_run_goes_on(tmp_path):
    app = create_view_app(recorded_run_dir(tmp_path, epochs=2))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.view.ended
        helps = {command.title: command.help for command in app.get_system_commands(app.screen)}
    assert "Close the viewer" in helps and "goes on" not in helps["Close the viewer"], helps
