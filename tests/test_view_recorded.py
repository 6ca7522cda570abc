"""`tui-trainer view` of a finished run shows the run's own recorded figures — its elapsed time
and memory from metrics.jsonl, not the viewer's clock or the viewer's own process — and the
noise-scale line (or why there is none) as the app did at the run's end."""

from __future__ import annotations

import pytest
from helpers import tiny_config, train, with_limits
from screen import screen_text

from tui_trainer.rundir.metrics import read_metrics
from tui_trainer.ui import format as fmt
from tui_trainer.ui.viewer import create_view_app


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shakespeare_text):
    base = tmp_path_factory.mktemp("finished")
    corpus = base / "corpus.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    run_dir = base / "run"
    train(with_limits(tiny_config(corpus, run_dir, epochs=2, accum=3), 20))
    return run_dir


def test_the_end_record_carries_the_runs_elapsed_time(finished_run):
    end = [r for r in read_metrics(finished_run) if r["type"] == "end"][-1]
    epochs = sum(r["seconds"] for r in read_metrics(finished_run) if r["type"] == "epoch")
    assert end["elapsed_seconds"] >= epochs > 0  # set-up and the saves count too


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_view_of_a_finished_run_shows_its_recorded_elapsed_memory_and_noise_line(finished_run, size):
    records = read_metrics(finished_run)
    end = [r for r in records if r["type"] == "end"][-1]
    last_peak = [r for r in records if r["type"] == "step"][-1]["peak_memory"]
    assert last_peak > 0
    app = create_view_app(finished_run)  # the real memory probe: the viewer's own process is not the run's
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert app.view.ended
        for _ in range(30):  # (the memory row is read at the app's 1 Hz tick)
            if fmt.size(last_peak) in screen_text(app):
                break
            await pilot.pause(0.1)
        assert app.view.elapsed(1e9) == pytest.approx(end["elapsed_seconds"])  # the viewer's clock plays no part
        text = screen_text(app)
        assert fmt.size(last_peak) in text, text
        assert "noise" in text, text
        await pilot.press("q")
