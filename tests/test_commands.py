"""The keys and commands both apps offer (ui/commands.py) and what a user sees of them: the
footer, the help screen and the palette agree with what works now; toasts never hide the
diagnosis; `g` after the run says why nothing comes. Recorded events, the real apps."""

from __future__ import annotations

import re

from screen import screen_text
from test_screen_sizes import ended_run, footer, render
from test_snapshots import recorded_epochs, started
from test_view import recorded_run_dir
from textual.widgets._toast import Toast

from tui_trainer.analysis.diagnosis import KINDS
from tui_trainer.ui import commands
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.factory import create_replay_app
from tui_trainer.ui.viewer import ViewerApp, create_view_app
from tui_trainer.ui.widgets import DiagnosisBanner, HelpScreen

VERDICTS = KINDS  # (every verdict the help screen names)


def notices(app) -> list[str]:
    return [notification.message for notification in app._notifications]


def help_lines(app, first: str, last: str, skip: int = 1) -> list[str]:
    """The help box's lines from the one that starts with ``first`` (and ``skip`` more) to the
    title ``last``, without the border and the box's padding (the body's padding stays: one space)."""
    lines = [re.sub("[▁-█]+$", "", line.strip("│")[1:]).rstrip() for line in screen_text(app).splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith(last))
    return [line for line in lines[start + skip:end] if line.strip()]


# -- one table for both apps ---------------------------------------------------------------------

def test_every_key_the_apps_bind_has_words_in_the_help():
    for table in (commands.TRAINER, commands.VIEWER):
        helped = {token for key in table.keys for token in key.key.split()}
        for binding in table.bindings:
            assert binding.description, binding.key
            shown = binding.key_display or binding.key.split(",")[0].replace("ctrl+", "^")
            assert shown in helped, (binding.key, shown)
        for command in table.palette:  # and the palette names a key that is bound to it
            assert any(command.action == binding.action for binding in table.bindings), command


def test_steering_needs_a_reachable_live_run_and_q_reads_stop_then_quit():
    for table in (commands.TRAINER, commands.VIEWER):
        for action in ("pause", "accum_up", "accum_down", "save", "sample"):
            assert table.available(action, ended=False, steerable=True)
            assert not table.available(action, ended=True, steerable=False)
    assert commands.TRAINER.available("stop", ended=False, steerable=True)
    assert not commands.TRAINER.available("stop", ended=True, steerable=False)
    assert commands.TRAINER.available("close_app", ended=True, steerable=False)
    assert not commands.TRAINER.available("close_app", ended=False, steerable=True)
    # A viewer closes whatever the run does; it stops the run only where it can reach it.
    assert commands.VIEWER.available("close_app", ended=False, steerable=False)
    assert commands.VIEWER.available("close_app", ended=True, steerable=False)
    assert not commands.VIEWER.available("stop_run", ended=False, steerable=False)


async def test_the_viewer_palette_says_what_its_keys_do(tmp_path):
    app = create_view_app(recorded_run_dir(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        titles = {command.title: command.help for command in app.get_system_commands(app.screen)}
    # (a finished run: "the run goes on" is said only while it does)
    assert "Close the viewer" in titles and "the run is over" in titles["Close the viewer"]
    assert not {"Stop training", "Close the app", "Pause / resume training", "Sample text"} & titles.keys()


# -- b: after the run, q reads "quit" ------------------------------------------------------------

async def test_after_the_run_q_reads_quit_in_the_footer_and_the_help_and_quits():
    app = create_replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        running = footer(await render(app, pilot, [started(), *recorded_epochs(2)]))
        await pilot.press("question_mark")
        running_help = " ".join(screen_text(app).split())
        await pilot.press("escape")
        ended = footer(await render(app, pilot, ended_run()[-1:]))
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        ended_help = " ".join(screen_text(app).split())
        await pilot.press("escape")
        await pilot.press("q")
        await pilot.pause()
        assert app._exit
    assert "q stop" in running and "q quit" not in running, running
    assert "q quit" in ended and "q stop" not in ended, ended
    assert "q stop: save, exit" in running_help and "q q close at once" in running_help
    assert "q quit" in ended_help and "stop: save, exit" not in ended_help and "close at once" not in ended_help


# -- c: the help's wrapped lines hang under their column -----------------------------------------

async def test_help_lines_that_wrap_hang_under_their_description_column():
    for width, height in ((80, 40), (60, 50), (40, 80), (26, 400)):
        app = TrainerApp()
        async with app.run_test(size=(width, height)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            app.screen.query_one("#help-box").styles.max_height = None  # all of it, no scrollbar
            await pilot.pause()
            diagnoses = help_lines(app, " learning", "The noise", skip=0)  # (the title above may wrap)
            keys = help_lines(app, "Keys", "Gradient")
        assert len(diagnoses) >= 7 + (width < 80), (width, diagnoses)
        for line in diagnoses:
            assert line.split()[0] in VERDICTS or line.startswith(" " * (1 + 13)), (width, line)
        if width < 30:  # one column of keys, and some descriptions wrap
            assert len(keys) > len(commands.TRAINER.keys), (width, keys)
        for line in keys:
            assert not line.startswith("  ") or line.startswith(" " * (1 + 4)), (width, line)
        for verdict in VERDICTS:
            assert any(line.split()[0] == verdict for line in diagnoses), (width, verdict)


# -- a: toasts leave the diagnosis readable ------------------------------------------------------

async def test_toasts_never_cover_the_diagnosis_banner_or_the_status_line():
    for size in ((80, 24), (60, 20), (140, 45)):
        app = create_replay_app()
        async with app.run_test(size=size, notifications=True) as pilot:
            await render(app, pilot, [started(), *recorded_epochs(3)])
            app.notify("saved latest checkpoint at step 120 (0.4s)", title="checkpoint")
            app.notify("accum 8 -> 16 from epoch 4")
            await pilot.pause(0.3)
            banner = app.screen.query_one(DiagnosisBanner).region
            toasts = [toast.region for toast in app.screen.query(Toast)]
            assert len(toasts) == 2, size
            for toast in toasts:
                assert not toast.overlaps(banner), (size, toast, banner)
                assert toast.y >= 1, (size, toast)  # the status line stays
            assert app.view.diagnosis in screen_text(app) and "remedy" in screen_text(app)


# -- d: g after the run says why -----------------------------------------------------------------

async def test_g_after_the_run_says_where_samples_come_from_in_the_app():
    app = create_replay_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await render(app, pilot, ended_run())
        await pilot.press("g")
        await pilot.pause()
        text = screen_text(app)  # (in the samples screen: a toast covered the sample it contradicted)
        assert not app.view.sample_requested and not notices(app)
    assert "the run has ended" in text and "tui-trainer sample" in text, text


async def test_g_in_a_viewer_of_a_finished_run_says_where_samples_come_from(tmp_path):
    app = create_view_app(recorded_run_dir(tmp_path))
    assert isinstance(app, ViewerApp)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        await pilot.press("g")
        await pilot.pause()
        lines = [line.strip("│ ") for line in screen_text(app).splitlines()]  # (the path may wrap)
        assert not notices(app)
    text = "".join(lines)
    assert "the run has ended" in text and "tui-trainer sample" in text and str(app.follower.run_dir) in text, text


def test_the_run_start_notes_are_no_toast():
    """The banner shows them until the first diagnosis, and `?` lists them (test_app_overlays.py)."""
    from tui_trainer.events import RunStarted
    from tui_trainer.ui.toasts import toasts_for

    fields = {f: None for f in RunStarted.__dataclass_fields__}
    event = RunStarted(**{**fields, "notes": ["the machine is busy", "time-budget defaults: accum 1", "resumed"]})
    assert toasts_for(event) == []


def test_a_checkpoint_toast_is_for_a_save_someone_asked_for_only():
    """The event says it was asked for (`s`, a viewer, a retry of a failed final save): an epoch end's
    save in between is no answer to `s` (the app's own flag took whichever save came next)."""
    from tui_trainer.events import CheckpointSaved
    from tui_trainer.ui.toasts import toasts_for

    saved = dict(kind="latest", path="run/checkpoints/latest.pt", step=7, epoch=1, seconds=0.25)
    assert toasts_for(CheckpointSaved(**saved)) == []
    [toast] = toasts_for(CheckpointSaved(**saved, requested=True))
    assert toast.message == "saved latest checkpoint at step 7 (0.25s)"
    [toast] = toasts_for(CheckpointSaved(**saved, requested=True, redone_micro_steps=1))
    assert toast.message == "saved latest checkpoint at step 7 (0.25s); a resume redoes step 8 (1 micro-step in)"
