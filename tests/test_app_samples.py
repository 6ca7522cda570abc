"""The app's text samples: the panel on wide screens, the `g` screen at 80x24, real engine and replays."""

from __future__ import annotations

from dataclasses import replace

from screen import screen_text
from test_app import apps, make_app, pause_after, send_key, wait_for  # noqa: F401  (apps is a fixture)
from test_snapshots import recorded_epochs, replay, started

from tui_trainer.events import EpochEvent, SampleEvent
from tui_trainer.ui.widgets.samples import SamplePanel, SamplesScreen

# What a model writes as it learns (hand-written, so the snapshots never depend on torch).
SAMPLES = [
    "Tho wis mer, an sth thave\nAnd tof me hor thes fo ke.",
    "KING RICHARD:\nWhat is the sonne of thee, my lord,\nAnd stand the wored and shall be so.",
    "ROMEO:\nWhat, shall I speak of this? I pray thee, stay;\nThe night is gone, and yet my heart is here.",
]


def with_samples(events: list) -> list:
    """``events`` with a sample on each epoch event, and a run that writes them."""
    out, epochs = [], iter(SAMPLES)
    for event in events:
        if isinstance(event, EpochEvent):
            event = replace(event, sample=next(epochs))
        out.append(event)
    return [replace(out[0], sample_tokens=200), *out[1:]]


def flat(app) -> str:
    return " ".join(screen_text(app).replace("│", " ").split())


# -- snapshots ------------------------------------------------------------------------------------

def test_wide_screen_shows_the_latest_sample_beside_the_plot(snap_compare):
    app, run_before = replay(with_samples([started(), *recorded_epochs(3)]))
    assert snap_compare(app, terminal_size=(150, 40), run_before=run_before)


def test_samples_screen_on_g_at_80x24(snap_compare):
    app, run_before = replay(with_samples([started(), *recorded_epochs(3)]))
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before, press=["g"])


# -- the real engine ------------------------------------------------------------------------------

async def test_g_at_80x24_opens_the_samples_screen_and_the_engine_writes_one_now(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=2, sample_tokens=0)  # no epoch samples: g's only
    apps.append(app)
    app.control.pause()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        assert not app.query_one(SamplePanel).display  # no room for the panel at 80 columns
        send_key(app, "g")
        await wait_for(pilot, lambda: isinstance(app.screen, SamplesScreen), what="the samples screen")
        # Paused, the engine samples at once from the weights it has.
        await wait_for(pilot, lambda: app.view.sample is not None, what="the asked sample")
        sample = app.view.sample
        assert sample.asked and len(sample.text) == 200 and sample.step == app.view.step
        await pilot.pause(0.3)  # a drain tick
        text = flat(app)
        # the step as the progress panel counts it, in the epoch
        assert f"sample · epoch 1 · asked at step {app.view.step_in_epoch}/{app.view.steps_in_epoch}" in text
        first_words = " ".join(sample.text.split())[:20].strip()
        assert first_words in text
        send_key(app, "escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, SamplesScreen), what="the screen to close")
        app.control.resume()
        await wait_for(pilot, lambda: app.view.step >= sample.step + 3, what="training to go on")


async def test_wide_screen_shows_each_epoch_sample_in_its_panel(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=2, train_batches=40, sample_tokens=60)
    apps.append(app)
    pause_after(app, lambda e: isinstance(e, EpochEvent))  # (at once: a loaded machine's pause came late)
    async with app.run_test(size=(150, 40)) as pilot:
        await wait_for(pilot, lambda: app.view.sample is not None and app.view.state == "paused",
                       what="the first epoch's sample, then the pause")
        await pilot.pause(0.3)
        panel = app.query_one(SamplePanel)
        assert panel.display and panel.size.height >= 4
        assert app.view.sample.epoch == 1 and not app.view.sample.asked and len(app.view.sample.text) == 60
        assert "sample · after epoch 1" in flat(app)
        app.control.resume()
        await wait_for(pilot, lambda: app.view.ended, timeout=60, what="the run to end")
        await pilot.pause(0.3)
        assert "after epoch 2" in flat(app)


def test_the_sample_title_names_its_epoch_once():
    from tui_trainer.ui.view import RunView, SampleShown
    from tui_trainer.ui.widgets.samples import sample_title

    view = RunView()
    view.sample = SampleShown(epoch=3, step=120, text="x", asked=False)
    assert sample_title(view) == "sample · after epoch 3"
    view.sample = SampleShown(epoch=3, step=1234, text="x", asked=True, step_in_epoch=34, steps_in_epoch=600)
    assert sample_title(view) == "sample · epoch 3 · asked at step 34/600"
    view.sample_requested = True
    assert sample_title(view) == "sample · epoch 3 · asked at step 34/600 · a new one after this step…"
    view.sample_requested = False
    view.sample = SampleShown(epoch=3, step=1234, text="x", asked=True)  # where in its epoch: not known
    assert sample_title(view) == "sample · epoch 3 · asked at step 1,234 of the run"


def test_an_asked_sample_is_placed_in_its_epoch_as_the_progress_panel_counts():
    from tui_trainer.events import SampleEvent
    from tui_trainer.ui.view import RunView
    from tui_trainer.ui.view_events import fold

    view = RunView(epoch=2, step=51, step_in_epoch=11, steps_in_epoch=40)
    fold(view, SampleEvent(epoch=2, step=51, text="x", seconds=0.1), 0.0)
    assert (view.sample.step_in_epoch, view.sample.steps_in_epoch) == (11, 40)
    view.step = 52  # (a sample of an earlier step: where it sat is not known)
    fold(view, SampleEvent(epoch=2, step=51, text="y", seconds=0.1), 0.0)
    assert view.sample.step_in_epoch is None


async def test_the_footers_keys_work_under_the_samples_screen_q_stops_the_run(small_corpus, tmp_path, apps):
    app = make_app(small_corpus, tmp_path / "run", epochs=50, sample_tokens=0)  # (still running when q comes)
    apps.append(app)
    app.control.pause()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.view.state == "paused", what="the first pause")
        send_key(app, "g")
        await wait_for(pilot, lambda: isinstance(app.screen, SamplesScreen), what="the samples screen")
        await pilot.pause(0.3)
        assert "q stop" in screen_text(app).splitlines()[-1] and "p pause/resume" in screen_text(app)
        await pilot.press("p")  # the footer's keys work from here (Textual ends a modal's key chain at it)
        await wait_for(pilot, lambda: app.view.state == "running", what="p to resume the run")
        assert isinstance(app.screen, SamplesScreen) and not app.view.ended
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, timeout=60, what="the app to stop and exit")
    assert app.engine.finish().reason != "completed"  # stopped and saved, not closed-and-carried-on


def test_an_epochs_sample_that_comes_just_after_an_asked_one_keeps_it_below():
    from tui_trainer.ui.view import RunView
    from tui_trainer.ui.view_events import fold
    from tui_trainer.ui.widgets.samples import sample_text, sample_title

    view = RunView(epoch=4, step=32, step_in_epoch=32, steps_in_epoch=38)
    fold(view, SampleEvent(epoch=4, step=32, text="ASKED TEXT", seconds=0.1), 0.0)
    view.step = 38
    fold(view, replace(recorded_epochs(4)[-1], sample="EPOCH TEXT"), 0.0)  # epoch 4's own, a moment later
    shown = sample_text(view).plain
    assert shown.index("EPOCH TEXT") < shown.index("asked at step 32/38") < shown.index("ASKED TEXT")
    assert sample_title(view) == "sample · after epoch 4 · the asked one below"
    view.epoch = 5
    fold(view, replace(recorded_epochs(5)[-1], sample="NEXT EPOCH"), 0.0)  # the asked one was epoch 4's
    assert "ASKED TEXT" not in sample_text(view).plain and sample_title(view) == "sample · after epoch 5"
