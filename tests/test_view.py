"""`tui-trainer view RUN_DIR`: the app on a run it does not train — a finished run's whole
history, a live headless run followed and steered through its control socket, bad input refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
from helpers import tiny_config, with_limits
from screen import screen_text
from test_run_lock import start_long_run
from test_snapshots import FixedClock, recorded_epochs

from tui_trainer.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tui_trainer.engine.loop import Trainer
from tui_trainer.errors import UserError
from tui_trainer.events import Notice, RunEnded
from tui_trainer.rundir import control_socket as cs
from tui_trainer.rundir.lifecycle import CONFIG_FILE
from tui_trainer.rundir.metrics import METRICS_FILE, MetricsWriter, read_metrics
from tui_trainer.ui.view import PAUSED
from tui_trainer.ui.viewer import create_view_app


async def wait_for(pilot, condition, seconds: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def steps_on_disk(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if r["type"] == "step"]


def recorded_run_dir(tmp_path, epochs: int = 7):
    """A finished run's dir written from deterministic events (the snapshot module's formula)."""
    run_dir = tmp_path / "20260101-120000"
    run_dir.mkdir()
    cfg = RunConfig(model=ModelConfig(n_layer=6, n_head=8, n_embd=256, block_size=128, vocab_size=65),
                    data=DataConfig(path="tinyshakespeare.txt"), train=TrainConfig(epochs=10, micro_batch=16, accum=8))
    (run_dir / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict(), "vocab": ["x"] * 65, "device": "cpu",
                                                   "threads": 2}))
    writer = MetricsWriter(run_dir)
    events = recorded_epochs(epochs)
    for event in events:
        writer.emit(event)
    writer.emit(RunEnded(reason="completed", epochs=epochs, steps=events[-2].step, tokens_seen=events[-1].tokens_seen,
                         best_val_loss=events[-1].best_val_loss, best_epoch=events[-1].best_epoch,
                         diagnosis="healthy", diagnosis_reason=events[-1].diagnosis_reason))
    writer.close()
    return run_dir


async def test_view_of_a_finished_run_shows_its_whole_history_and_writes_nothing(tmp_path):
    run_dir = recorded_run_dir(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    app = create_view_app(run_dir, clock=FixedClock(), memory_probe=lambda device: "—")
    async with app.run_test(size=(150, 40)) as pilot:
        await pilot.pause()
        assert app.view.ended and app.view.end_reason == "completed"
        assert len(app.view.epoch_rows) == 7 and app.view.step == 7 * 60
        assert app.view.diagnosis == "healthy"
        text = screen_text(app)
        assert "finished" in text and "healthy" in text
        await pilot.press("p", "plus")  # greyed out: nothing to steer
        await pilot.press("q")
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_view_of_a_finished_run_snapshot(tmp_path, snap_compare):
    app = create_view_app(recorded_run_dir(tmp_path), clock=FixedClock(), memory_probe=lambda device: "412 MB rss")

    async def run_before(pilot) -> None:
        app.tick()  # the memory probe, now that the run's device is known (the timer's tick may not have come)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(150, 40), run_before=run_before)


def test_a_torn_last_line_is_skipped_and_real_corruption_is_named_by_its_line(tmp_path):
    run_dir = recorded_run_dir(tmp_path, epochs=2)
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write('{"type": "step", "epo')  # a crash mid-line
    app = create_view_app(run_dir)
    assert len(app._replay) > 100
    assert not [e for e in app._replay if isinstance(e, Notice)]  # a torn last line: silently
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    lines[5] = "not json"
    (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n")
    app = create_view_app(run_dir)  # the run is still viewable; the bad line is named, not deleted
    notices = [e.message for e in app._replay if isinstance(e, Notice)]
    assert len(notices) == 1 and "line 6 (not JSON)" in notices[0], notices
    assert (run_dir / METRICS_FILE).read_text().splitlines()[5] == "not json"


@pytest.mark.parametrize("kind, words", [("not a run dir", "not a run dir"),
                                         ("a truncated config.json", "config.json is not a run's config"),
                                         ("a plain file for a socket", "not a control socket"),
                                         ("a socket open to all", "open to other users")])
def test_bad_input_to_view_is_refused_with_one_line(kind, words, tmp_path):
    run_dir = recorded_run_dir(tmp_path, epochs=1)
    target = run_dir
    if kind == "not a run dir":
        target = tmp_path
    elif kind == "a truncated config.json":
        (run_dir / CONFIG_FILE).write_bytes((run_dir / CONFIG_FILE).read_bytes()[:50])
    elif kind == "a plain file for a socket":
        (run_dir / cs.SOCKET_FILE).write_text("x")
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(run_dir / cs.SOCKET_FILE))
        os.chmod(run_dir / cs.SOCKET_FILE, 0o666)
        server.close()
    with pytest.raises(UserError, match=words) as caught:
        create_view_app(target)
    assert "\n" not in caught.value.one_line()


def test_view_of_a_path_that_is_not_a_run_dir_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tui_trainer", "view", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "not a run dir" in result.stderr, result.stderr


async def test_view_follows_and_steers_a_live_headless_run(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    process = start_long_run(small_corpus, run_dir)
    try:
        sock = run_dir / cs.SOCKET_FILE
        assert stat.S_ISSOCK(sock.lstat().st_mode) and stat.S_IMODE(sock.lstat().st_mode) == 0o600
        app = create_view_app(run_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            # Records appear as the run writes them.
            await wait_for(pilot, lambda: app.view.step > 0, what="the first steps")
            seen = app.view.step
            await wait_for(pilot, lambda: app.view.step > seen + 4, what="new steps")
            assert not app.view.ended
            # `+` doubles accum at the run's next epoch boundary.
            await pilot.press("plus")
            await wait_for(pilot, lambda: app.view.accum == 4, what="accum 4 in the step records")
            assert any(r.get("accum") == 4 for r in read_metrics(run_dir) if r["type"] == "step")
            # `p` pauses it: no steps while paused.
            await pilot.press("p")
            await wait_for(pilot, lambda: app.view.state == PAUSED, what="the pause")
            paused_at = steps_on_disk(run_dir)[-1]
            await pilot.pause(1.5)
            assert steps_on_disk(run_dir)[-1] == paused_at
            # `g` asks the run for a sample (paused: at once, and no epoch's sample comes after it);
            # the run writes it to metrics.jsonl, the viewer shows it.
            await pilot.press("g")
            await wait_for(pilot, lambda: app.view.sample is not None and app.view.sample.asked, what="the sample")
            assert [r["type"] for r in read_metrics(run_dir)].count("sample") == 1
            await pilot.press("escape")  # (the samples screen, at 100 columns)
            await pilot.press("p")
            await wait_for(pilot, lambda: steps_on_disk(run_dir)[-1] > paused_at, what="steps after resuming")
            await pilot.press("q")  # closes the viewer only
        time.sleep(0.5)
        assert process.poll() is None
        # A second viewer stops the run, after a confirmation.
        app = create_view_app(run_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("ctrl+x", "n")
            await pilot.pause(0.5)
            assert process.poll() is None
            await pilot.press("ctrl+x", "y")
            await wait_for(pilot, lambda: app.view.ended, what="the run's end")
            assert app.view.end_reason == "interrupted"
        assert process.wait(30) == 0
        assert read_metrics(run_dir)[-1]["type"] == "end"
        assert not sock.exists()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(30)


def test_a_command_through_the_socket_changes_accum_at_the_next_epoch(small_corpus, tmp_path):
    import threading

    # (epochs of 96 micro-batches, not 8: an 8-batch epoch 1 took a few milliseconds, and on a loaded box
    # the steering thread's first command came after it — a flaky failure)
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=3, accum=2), 96, 2)
    trainer = Trainer(cfg)
    answers = []

    def steer() -> None:
        path = cs.socket_path(trainer.run_dir)
        while not path.exists():
            time.sleep(0.01)
        # Hold the run at its first micro-step until the command is in; the answer is the status
        # after the run applied the pause (or, still setting up after a second, says it has not).
        answers.append(cs.send_command(path, {"command": "pause"}))
        answers.append(cs.send_command(path, {"command": "accum", "value": 4}))
        answers.append(cs.send_command(path, {"command": "resume"}))

    thread = threading.Thread(target=steer)
    thread.start()
    trainer.run()
    thread.join()
    assert all(answer["ok"] for answer in answers)
    assert answers[0]["status"]["paused"] is answers[0]["applied"]
    assert answers[1]["status"]["pending_accum"] == 4 and answers[2]["status"]["paused"] is False
    accums = {r["epoch"]: r["accum"] for r in read_metrics(tmp_path / "run") if r["type"] == "step"}
    assert accums == {1: 2, 2: 4, 3: 4}


async def test_view_of_two_runs_overlays_their_epoch_curves_with_a_legend(tmp_path):
    from tui_trainer.ui.compare import create_compare_app

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_dirs = [str(recorded_run_dir(tmp_path / "a", epochs=3)), str(recorded_run_dir(tmp_path / "b", epochs=5))]
    app = create_compare_app(run_dirs)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert [len(run.epochs) for run in app.runs] == [3, 5]
        title = str(app.query_one("#compare").border_title)
        # each run by the shortest suffix of its path that tells it apart (both end in 20260101-120000)
        assert "a/20260101-120000" in title and "b/20260101-120000" in title and "val" in title
        await pilot.press("q")


HOSTILE_LINES = [b"[1,2,3]", b'{"type": "epoch", "epoch": 2, "val_loss": null}', b"\xff\xfe", b"[" * 50_000]


async def test_view_of_runs_with_hostile_metrics_lines_shows_them_and_names_every_bad_line(tmp_path):
    from tui_trainer.ui.compare import create_compare_app

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_dirs = [recorded_run_dir(tmp_path / "a", epochs=3), recorded_run_dir(tmp_path / "b", epochs=2)]
    for run_dir in run_dirs:
        lines = (run_dir / METRICS_FILE).read_bytes().split(b"\n")
        (run_dir / METRICS_FILE).write_bytes(b"\n".join([lines[0], *HOSTILE_LINES, *lines[1:]]))
    viewer = create_view_app(run_dirs[0])
    notices = [e.message for e in viewer._replay if isinstance(e, Notice)]
    assert len(notices) == 1 and all(f"line {n}" in notices[0] for n in (2, 3, 4, 5)), notices
    app = create_compare_app([str(run_dir) for run_dir in run_dirs])
    told: list[str] = []
    app.notify = lambda message, **options: told.append(message)  # (what the app tells its user)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert [len(run.epochs) for run in app.runs] == [3, 2]
        assert len(told) == 2 and all("line 2 (a JSON list, not an object)" in m for m in told), told
        await pilot.press("q")
