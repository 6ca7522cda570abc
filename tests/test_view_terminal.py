"""`tui-trainer view` for real: two viewers in tmux panes on one live headless run — records
appear, `+` changes the run's accum at its next epoch, `p` pauses it (no steps while paused),
`q` closes a viewer and leaves the run running, `ctrl+x` `y` stops it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import has_tmux, tmux, tmux_screen, wait_until
from test_run_lock import start_long_run
from test_view import steps_on_disk

from tui_trainer.rundir.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not has_tmux(), reason="needs tmux")]


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
            wait_until(lambda: "running" in tmux_screen(server, pane) and "loss" in tmux_screen(server, pane), 60,
                       "the viewer", lambda: tmux_screen(server, pane))
        tmux(server, "send-keys", "-t", "v1", "+")
        wait_until(lambda: any(r.get("accum") == 4 for r in read_metrics(run_dir) if r["type"] == "step"), 30,
                   "accum 4 in the run's steps", lambda: tmux_screen(server, "v1"))
        tmux(server, "send-keys", "-t", "v2", "p")
        for pane in ("v1", "v2"):  # both viewers see the pause (v1 through the run's status)
            wait_until(lambda: "paused" in tmux_screen(server, pane), 30, "the pause on screen",
                       lambda: tmux_screen(server, pane))
        paused_at = steps_on_disk(run_dir)[-1]
        time.sleep(1.5)
        assert steps_on_disk(run_dir)[-1] == paused_at
        tmux(server, "send-keys", "-t", "v1", "p")
        wait_until(lambda: steps_on_disk(run_dir)[-1] > paused_at, 30, "steps after resuming",
                   lambda: tmux_screen(server, "v1"))
        tmux(server, "send-keys", "-t", "v1", "q")
        wait_until(lambda: tmux(server, "has-session", "-t", "v1").returncode != 0, 30, "v1 to close")
        time.sleep(0.5)
        assert process.poll() is None  # closing a viewer never touches the run
        tmux(server, "send-keys", "-t", "v2", "C-x")
        wait_until(lambda: "Stop the run" in tmux_screen(server, "v2"), 10, "the question",
                   lambda: tmux_screen(server, "v2"))
        tmux(server, "send-keys", "-t", "v2", "y")
        assert process.wait(60) == 0
        wait_until(lambda: "stopped" in tmux_screen(server, "v2"), 30, "the end on screen",
                   lambda: tmux_screen(server, "v2"))
        assert read_metrics(run_dir)[-1]["reason"] == "interrupted"
    finally:
        tmux(server, "kill-server")
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
