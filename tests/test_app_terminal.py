"""The app in a real pseudo-terminal: the CLI draws on it, and when the terminal goes away
(SSH drop, tmux session killed) the run saves, writes its `end` record and the process exits."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_MODEL

from tui_trainer.ui.terminal import TerminalOutput

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pseudo-terminals")

TINY = [*TINY_MODEL, "--epochs", "500", "--limit-val-batches", "2", "--device", "cpu", "--patience", "0"]


def read_available(fd: int, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def steps_written(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"type": "step"' in line)


def test_terminal_gone_then_sighup_saves_and_exits(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.Popen([sys.executable, "-m", "tui_trainer.cli.main", "--data", str(small_corpus),
                             "--run-dir", str(run_dir), *TINY],
                            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    try:
        screen = b""
        deadline = time.monotonic() + 60
        while steps_written(run_dir) < 3:
            assert proc.poll() is None, screen.decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "no steps within 60 s"
            screen += read_available(master, 0.2)  # keep the pty drained, as a terminal would
        screen += read_available(master, 0.5)
        assert b"micro-step" in screen and b"tui-trainer" in screen  # the app drew on the terminal
        os.close(master)  # the terminal goes away...
        master = -1
        time.sleep(2.0)  # ...while the app goes on drawing into it...
        assert proc.poll() is None
        proc.send_signal(signal.SIGHUP)  # ...then the kernel's hang-up: SIGHUP, then SIGCONT
        proc.send_signal(signal.SIGCONT)
        code = proc.wait(timeout=30)
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 128 + signal.SIGHUP
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "interrupted"
    assert (run_dir / "checkpoints" / "latest.pt").exists()


def test_terminal_output_goes_quiet_when_the_terminal_is_gone():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    output = TerminalOutput(stream)
    output.write("hello")
    output.flush()
    assert os.read(read_end, 100) == b"hello"
    os.close(read_end)  # the other side is gone: EPIPE from now on
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        for _ in range(3):
            output.write("x" * 70_000)
            output.flush()
    finally:
        signal.signal(signal.SIGPIPE, previous)
    assert output.gone and not output.isatty()
    try:
        stream.close()
    except OSError:
        pass
