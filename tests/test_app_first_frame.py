"""The app shows itself before the seconds of set-up (torch, the data, the model), which run on a
passing thread; bad input found then closes the app and becomes the usual one line."""

from __future__ import annotations

import threading
from dataclasses import replace

from helpers import tiny_config, with_limits
from screen import screen_text

from tui_trainer.errors import UserError
from tui_trainer.rundir.metrics import read_metrics
from tui_trainer.ui.factory import create_app
from tui_trainer.ui.threads import PassingBuild


async def wait_until(pilot, predicate, what: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def gated(app, gate: threading.Event) -> None:
    """Hold the app's set-up until ``gate`` opens (a slow machine, made deterministic)."""
    build = app.engine.set_up.build

    def slow_build():
        gate.wait(30)
        return build()

    app.engine.set_up = PassingBuild(slow_build)


async def test_the_app_shows_a_setting_up_state_then_runs(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 8)
    app = create_app(cfg, in_background=True)
    gate = threading.Event()
    gated(app, gate)
    threads_before = {t.name for t in threading.enumerate()}
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "setting up" in text.splitlines()[0] and "loading torch" in text, text
        assert " run " in text.splitlines()[0], text  # the run dir's name from the first frame, not "—"
        assert app.engine.trainer is None and "tui-trainer-set-up" in {t.name for t in threading.enumerate()}
        gate.set()
        await wait_until(pilot, lambda: app.view.ended, "the run to end")
        assert "setting up" not in screen_text(app)
        await pilot.press("q")
    assert app.engine.finish().reason == "completed"
    # The set-up thread passed: it is gone with its OpenMP team (the reason it is a thread at all).
    assert "tui-trainer-set-up" not in {t.name for t in threading.enumerate()} - threads_before


async def test_bad_input_found_while_the_app_shows_closes_it_with_the_error(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 8)
    cfg = cfg.replace(model=replace(cfg.model, n_head=3))  # 32 is not divisible by 3
    app = create_app(cfg, in_background=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.engine.set_up_error is not None, "the set-up to fail")
    assert app.engine.finish() is None
    assert isinstance(app.engine.set_up_error, UserError) and "not divisible" in str(app.engine.set_up_error)
    assert not (tmp_path / "run").exists()  # nothing created


async def test_q_while_it_sets_up_ends_the_run_with_a_saved_step_zero(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 8)
    app = create_app(cfg, in_background=True)
    gate = threading.Event()
    gated(app, gate)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("q")
    gate.set()
    end = app.engine.finish()
    assert end.reason == "interrupted" and end.steps == 0
    assert [r["reason"] for r in read_metrics(tmp_path / "run") if r["type"] == "end"] == ["interrupted"]




async def test_while_it_sets_up_the_screen_says_how_far_the_data_preparation_is(tmp_path, shakespeare_text):
    from tui_trainer.events import DataPreparing
    from tui_trainer.ui.factory import create_replay_app

    # Text no cache has seen: it is fingerprinted, checked and tokenized, each phase reporting.
    corpus = tmp_path / "fresh.txt"
    corpus.write_text(shakespeare_text[:20_000] + f"\n{tmp_path.name}\n", encoding="utf-8")
    app = create_app(with_limits(tiny_config(corpus, tmp_path / "run", epochs=1), 4), in_background=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.view.ended, "the run to end")
        assert app.view.data_progress.startswith("preparing the data: "), app.view.data_progress
        await pilot.press("q")
    assert app.engine.finish().reason == "completed"

    shown = create_replay_app([DataPreparing(phase="tokenizing", fraction=0.4, total_bytes=52_000_000,
                                             mb_per_s=98.5)])
    async with shown.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert "preparing the data: tokenizing 40% of 52.0 MB (98.5 MB/s)" in screen_text(shown)
