"""What a cold newcomer trial of `view`, `sample` and `runs` found: the words of their errors, a run
dir that is only being set up, a requested save's confirmation, the live viewer's elapsed time."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tui_trainer.cli.main import main


def exit_code(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exited:
        return exited.code


def test_view_without_a_run_dir_names_one_required(capsys):
    assert exit_code("view") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert "RUN_DIR" in err and "RUN_DIR, RUN_DIR" not in err  # (it read as two runs required)


def test_view_help_says_a_second_run_dir_compares(capsys):
    assert exit_code("view", "--help") == 0
    assert "compare" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["sample", "view"])
def test_a_file_given_as_the_run_dir_is_called_a_file(command, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert exit_code(command, str(empty)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{empty} is a file, not a run directory" in err
    assert "no such" not in err


@pytest.mark.parametrize("command", ["sample", "view"])
def test_a_missing_run_dir_is_still_no_such_run_directory(command, tmp_path, capsys):
    assert exit_code(command, str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run directory" in err
    assert "just starting: try again in a moment" in err  # (a view opened as its run starts: a trial)


# -- a run dir its live run is still setting up (4) ---------------------------------------------------

HOLDER = """
import sys, time, shutil
from pathlib import Path
from tui_trainer.rundir.lock import RunLock
run_dir, config, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
lock = RunLock(run_dir)
print("locked", flush=True)
deadline = time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
if config:
    shutil.copy(config, run_dir / "config.json")
time.sleep(float(sys.argv[4]))
"""


def hold_a_run_dir(run_dir, config: str, go, then_live: float) -> subprocess.Popen:
    """A process that locks ``run_dir`` as a starting run does, writes ``config`` (a path; "" for
    none) once the file ``go`` exists (the test says when: a fixed delay raced the viewer's own
    start on a loaded machine) and lives ``then_live`` s more; returned once it holds the lock."""
    run_dir.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), config, str(go), str(then_live)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def view_waiting(run_dir, go) -> tuple[subprocess.CompletedProcess, str]:
    """`view run_dir`, its first line on stderr read before ``go`` is made (the viewer is waiting
    then, or the first line says why not), then the rest."""
    viewer = subprocess.Popen([sys.executable, "-m", "tui_trainer", "view", str(run_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        first = viewer.stderr.readline()
        time.sleep(0.5)  # (it goes on waiting: it polls the folder)
        go.touch()
        out, err = viewer.communicate(timeout=60)
    finally:
        go.touch()
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
    return subprocess.CompletedProcess(viewer.args, viewer.returncode, out, first + err), first


def test_view_of_a_run_dir_being_set_up_waits_for_its_config(tmp_path):
    from test_view import recorded_run_dir

    config = recorded_run_dir(tmp_path) / "config.json"
    run_dir = tmp_path / "starting"
    holder = hold_a_run_dir(run_dir, str(config), go=tmp_path / "go", then_live=30)
    try:
        viewer, first = view_waiting(run_dir, tmp_path / "go")
    finally:
        holder.kill()
        holder.wait()
    lines = viewer.stderr.strip().splitlines()
    assert first.startswith(f"waiting for {run_dir} to start") and "Ctrl-C" in first, lines
    # ... then it got past the run-dir check to the app (which wants a terminal, and has none here)
    assert "not a run dir" not in viewer.stderr and "view needs a terminal" in lines[-1], lines
    assert viewer.returncode == 2


def test_a_folder_its_process_leaves_without_a_config_is_not_a_run_dir(tmp_path):
    run_dir = tmp_path / "failed-start"
    holder = hold_a_run_dir(run_dir, "", go=tmp_path / "go", then_live=0)
    try:
        viewer, first = view_waiting(run_dir, tmp_path / "go")
    finally:
        holder.kill()
        holder.wait()
    assert viewer.returncode == 2
    lines = viewer.stderr.strip().splitlines()
    assert first.startswith("waiting for") and "is not a run dir" in lines[-1] and len(lines) == 2, lines


def test_a_folder_no_live_process_holds_is_not_a_run_dir_at_once(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert exit_code("view", str(tmp_path / "plain")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run dir" in err and "waiting" not in err


def test_the_wait_is_bounded(tmp_path):
    from tui_trainer.errors import UserError
    from tui_trainer.rundir.lock import RunLock
    from tui_trainer.rundir.setting_up import wait_for_start

    run_dir = tmp_path / "slow"
    run_dir.mkdir()
    lock = RunLock(run_dir)  # (a second flock on its own open file: held, as by another process)
    said = []
    ticks = iter(range(0, 1000, 10))
    try:
        with pytest.raises(UserError) as refused:
            wait_for_start(run_dir, said.append, seconds=60, clock=lambda: next(ticks), sleep=lambda s: None)
    finally:
        lock.release()
    assert len(said) == 1 and "still being set up" in refused.value.message and "60 s" in refused.value.message


# -- a save asked for from a viewer (3) -----------------------------------------------------------------

async def test_a_save_asked_for_from_a_viewer_is_confirmed_in_the_runs_log_and_the_viewer(small_corpus, tmp_path):
    from test_run_lock import train_command
    from test_view import wait_for

    from tui_trainer.rundir.control_socket import socket_path
    from tui_trainer.rundir.lock import live_holder
    from tui_trainer.ui.view import PAUSED
    from tui_trainer.ui.viewer import create_view_app

    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    with open(log, "w") as out:  # (no --checkpoint-every: the only `latest` before the stop is the one asked for)
        process = subprocess.Popen(train_command(small_corpus, run_dir, "--epochs", "100000"), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (live_holder(run_dir) and socket_path(run_dir).exists() and (run_dir / "metrics.jsonl").exists()):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        app = create_view_app(run_dir)
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await wait_for(pilot, lambda: app.view.step > 0, what="the first steps")
            await pilot.press("p")
            await wait_for(pilot, lambda: app.view.state == PAUSED, what="the pause")
            await pilot.press("s")
            await wait_for(pilot, lambda: app.view.last_checkpoint_kind == "latest", what="the save's confirmation")
            step = app.view.last_checkpoint_step
            # paused between micro-steps, inside step + 1's window: the viewer says it too (from the run's status)
            await wait_for(pilot, lambda: any(f"saved latest checkpoint at step {step}" in n.message
                                              and f"; a resume redoes step {step + 1} (" in n.message
                                              for n in app._notifications), what="the toast")
            await pilot.press("ctrl+x", "y")
            await wait_for(pilot, lambda: app.view.ended, what="the run's end")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    text = log.read_text()
    asked = text.index(f"a checkpoint was asked for at step {step}: saving now (paused)")
    assert f"saved latest checkpoint at step {step} (" in text[asked:] and ", as asked" in text[asked:], text
    assert f", as asked; a resume redoes step {step + 1} (" in text[asked:], text  # (the log says it as well)


# -- a live run's elapsed time in the viewer (1) ----------------------------------------------------------

def run_dir_with_steps(tmp_path, *records: dict):
    import json

    from metrics_records import line
    from test_view import recorded_run_dir

    run_dir = tmp_path / "live"
    run_dir.mkdir()
    (run_dir / "config.json").write_text((recorded_run_dir(tmp_path) / "config.json").read_text())
    (run_dir / "metrics.jsonl").write_text("".join(line(r.pop("type"), **r) for r in map(dict, records)))
    assert json.loads((run_dir / "config.json").read_text())
    return run_dir


def test_steps_carry_the_runs_own_clock(small_corpus, tmp_path):
    from helpers import tiny_config, train, with_limits

    from tui_trainer.events import RunEnded, StepEvent

    before = time.time()
    _, sink, _ = train(with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=2), 4, 2))
    steps, end = sink.of(StepEvent), sink.of(RunEnded)[-1]
    assert all(before <= s.unix_time <= time.time() for s in steps)
    elapsed = [s.elapsed for s in steps]
    assert elapsed == sorted(elapsed) and 0 < elapsed[0] and elapsed[-1] <= end.elapsed_seconds


async def test_the_viewer_of_a_live_run_shows_the_runs_elapsed_time_not_its_own(tmp_path):
    from tui_trainer.rundir.lock import RunLock
    from tui_trainer.ui.follow import MetricsFollower
    from tui_trainer.ui.viewer import create_view_app

    # The run's clock read 40 s at its latest step, 5 s ago: it reads 45 s now, whenever the viewer
    # opened (plus the seconds this test has taken since: measured, a loaded machine takes more).
    written = time.time()
    run_dir = run_dir_with_steps(tmp_path, {"type": "step", "step": 1, "elapsed": 30.0, "unix_time": written - 15},
                                 {"type": "step", "step": 2, "elapsed": 40.0, "unix_time": written - 5})
    lock = RunLock(run_dir)  # (held as by the training process: the run is live)

    def now_reads() -> float:
        return 45.0 + (time.time() - written)

    try:
        started = MetricsFollower(run_dir).poll()[0]
        assert 44.5 <= started.elapsed_before <= now_reads() + 0.5
        app = create_view_app(run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            first, ticked = app.view.elapsed(app.clock()), time.monotonic()
            assert 44.5 <= first <= now_reads() + 0.5
            await pilot.pause(1.2)  # ... and it ticks on from there, as the clock does
            second = app.view.elapsed(app.clock())
            assert second - first == pytest.approx(time.monotonic() - ticked, abs=0.5)
            assert 44.5 <= second <= now_reads() + 0.5
    finally:
        lock.release()


def test_a_killed_runs_viewer_shows_its_clock_at_its_last_step(tmp_path):
    from tui_trainer.ui.follow import MetricsFollower

    run_dir = run_dir_with_steps(tmp_path, {"type": "step", "step": 1, "elapsed": 40.0, "unix_time": time.time() - 500})
    events = MetricsFollower(run_dir).poll()
    assert events[0].elapsed_before == 40.0 and events[-1].elapsed_seconds == 40.0  # (not 540: it died then)


def test_a_resumed_run_before_its_first_step_shows_its_earlier_sessions_clock(tmp_path):
    from tui_trainer.rundir.lock import RunLock
    from tui_trainer.ui.follow import MetricsFollower

    run_dir = run_dir_with_steps(tmp_path, {"type": "step", "step": 8, "elapsed": 90.0, "unix_time": time.time() - 900},
                                 {"type": "end", "reason": "interrupted", "elapsed_seconds": 100.0})
    lock = RunLock(run_dir)  # the resumed session, setting up (not the 900 s since the step: the gap between sessions)
    try:
        assert MetricsFollower(run_dir).poll()[0].elapsed_before == 100.0
    finally:
        lock.release()


def test_a_viewer_opened_before_the_first_step_catches_up_with_the_runs_clock_forward_only():
    from metrics_records import STEP

    from tui_trainer.events import RunStarted, StepEvent
    from tui_trainer.ui.view import RunView

    view = RunView()
    view.apply(RunStarted(run_dir="R", device="cpu", threads=1, parameters=1, vocab_size=65, train_examples=64,
                          val_examples=8, epochs=1, micro_batch=4, accum=2, processes=1, block_size=32,
                          planned_tokens=2048), now=100.0)
    assert view.elapsed(103.0) == 3.0  # (the viewer's own clock: opened while the run set up)
    view.apply(StepEvent(**{**STEP, "elapsed": 9.0, "unix_time": time.time()}), now=103.0)
    assert view.elapsed(103.0) == pytest.approx(9.0, abs=0.2)  # the run's, from its first step on
    view.apply(StepEvent(**{**STEP, "step": 2, "elapsed": 8.0, "unix_time": time.time()}), now=104.0)
    assert view.elapsed(104.0) == pytest.approx(10.0, abs=0.2)  # never back
    view.apply(StepEvent(**{**STEP, "step": 3, "elapsed": 500.0, "unix_time": time.time() - 600}), now=104.0)
    assert view.elapsed(104.0) == pytest.approx(10.0, abs=0.2)  # an old record (history) is no word on now
