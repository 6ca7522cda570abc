"""`tui-trainer view` for real: two viewers in tmux panes on one live headless run — records
appear, `+` changes the run's accum at its next epoch, `p` pauses it (no steps while paused),
`q` closes a viewer and leaves the run running, `ctrl+x` `y` stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_lock import start_long_run
from test_view import steps_on_disk

from tui_trainer.rundir.metrics import read_metrics

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                                 reason="needs tmux")]


def tmux(server: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", server, *args], capture_output=True, text=True, timeout=30)


def screen(server: str, pane: str) -> str:
    return tmux(server, "capture-pane", "-p", "-t", pane).stdout


def wait_until(condition, seconds: float, what: str, server: str = "", pane: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{screen(server, pane) if pane else ''}"
        time.sleep(0.1)


def test_two_viewers_in_tmux_follow_and_steer_a_live_headless_run(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    process = start_long_run(small_corpus, run_dir)
    server = f"tui-trainer-view-{os.getpid()}"
    try:
        for pane in ("v1", "v2"):
            started = tmux(server, "new-session", "-d", "-s", pane, "-x", "100", "-y", "30", "-c", str(Path.cwd()),
                           f"exec {sys.executable} -m tui_trainer view {run_dir}")
            assert started.returncode == 0, started.stderr
        for pane in ("v1", "v2"):
            wait_until(lambda: "running" in screen(server, pane) and "loss" in screen(server, pane), 60,
                       "the viewer", server, pane)
        tmux(server, "send-keys", "-t", "v1", "+")
        wait_until(lambda: any(r.get("accum") == 4 for r in read_metrics(run_dir) if r["type"] == "step"), 30,
                   "accum 4 in the run's steps", server, "v1")
        tmux(server, "send-keys", "-t", "v2", "p")
        for pane in ("v1", "v2"):  # both viewers see the pause (v1 through the run's status)
            wait_until(lambda: "paused" in screen(server, pane), 30, "the pause on screen", server, pane)
        paused_at = steps_on_disk(run_dir)[-1]
        time.sleep(1.5)
        assert steps_on_disk(run_dir)[-1] == paused_at
        tmux(server, "send-keys", "-t", "v1", "p")
        wait_until(lambda: steps_on_disk(run_dir)[-1] > paused_at, 30, "steps after resuming", server, "v1")
        tmux(server, "send-keys", "-t", "v1", "q")
        wait_until(lambda: tmux(server, "has-session", "-t", "v1").returncode != 0, 30, "v1 to close")
        time.sleep(0.5)
        assert process.poll() is None  # closing a viewer never touches the run
        tmux(server, "send-keys", "-t", "v2", "C-x")
        wait_until(lambda: "Stop the run" in screen(server, "v2"), 10, "the question", server, "v2")
        tmux(server, "send-keys", "-t", "v2", "y")
        assert process.wait(60) == 0
        wait_until(lambda: "stopped" in screen(server, "v2"), 30, "the end on screen", server, "v2")
        assert read_metrics(run_dir)[-1]["reason"] == "interrupted"
    finally:
        tmux(server, "kill-server")
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
