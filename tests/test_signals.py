"""Signals against the real headless process: SIGTERM, SIGHUP and SIGINT at some micro-step end
the run with a `latest` checkpoint, an `end` record and exit 128+N; `--resume` then gives the
uninterrupted run's losses bit for bit."""

from __future__ import annotations

import os
import pty
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import has_tmux, tmux

from tui_trainer.cli.main import config_from_args, parse_args
from tui_trainer.engine.loop import Trainer
from tui_trainer.events import ListSink
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.metrics import read_metrics

# 20 micro-batches, accum 3: 7 steps an epoch (the last a remainder window), dropout on.
FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
         "--accum", "3", "--threads", "1", "--limit-train-batches", "20", "--limit-val-batches", "4",
         "--dropout", "0.1", "--epochs", "4", "--lr", "3e-3", "--checkpoint-every", "5"]
STEP_KEYS = ("epoch", "step", "accum", "tokens", "loss", "lr", "grad_norm", "tokens_seen", "skipped")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tui_trainer.cli.main", "--no-ui", *args]


def step_records(run_dir: Path) -> list[tuple]:
    return [tuple(r[k] for k in STEP_KEYS) for r in read_metrics(run_dir) if r["type"] == "step"]


def count_steps(path: Path) -> int:
    try:
        return path.read_text(encoding="utf-8").count('"type": "step"')
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shakespeare_text):
    """The reference: the same flags, run start to end in this process (also one thread)."""
    base = tmp_path_factory.mktemp("signals")
    corpus = base / "corpus.txt"
    corpus.write_text(shakespeare_text[:20_000], encoding="utf-8")
    args = parse_args(["--no-ui", "--data", str(corpus), "--run-dir", str(base / "reference"), *FLAGS])
    cfg, _ = config_from_args(args)
    trainer = Trainer(cfg, ListSink())
    end = trainer.run()
    assert end.reason == "completed" and end.steps == 28
    return corpus, step_records(base / "reference")


# (signal, step records to wait for, how the terminal looks, signals sent)
CASES = [
    pytest.param(signal.SIGTERM, 3, "file", 1, id="SIGTERM"),
    # The SSH link dropped: the terminal is gone, so stdout is a pipe nobody reads any more.
    pytest.param(signal.SIGHUP, 8, "gone", 1, id="SIGHUP-terminal-gone"),
    # An impatient double Ctrl-C: the second one lands while the first is stopping and saving.
    pytest.param(signal.SIGINT, 12, "file", 2, id="SIGINT-twice"),
]


@pytest.mark.parametrize("signum, after_steps, terminal, times", CASES)
def test_signal_at_a_random_micro_step_then_resume_gives_the_uninterrupted_losses(
        signum, after_steps, terminal, times, uninterrupted, tmp_path):
    corpus, want = uninterrupted
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    stderr = open(tmp_path / "stderr.txt", "w+")
    stdout = subprocess.PIPE if terminal == "gone" else open(tmp_path / "stdout.txt", "w")
    process = subprocess.Popen(cli("--data", str(corpus), "--run-dir", str(run_dir), *FLAGS), stdout=stdout,
                               stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while count_steps(metrics) < after_steps:
            assert process.poll() is None, "the run ended before the signal"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(random.uniform(0, 0.01))  # land somewhere inside a later micro-step
        if terminal == "gone":
            process.stdout.close()
        for _ in range(times):
            process.send_signal(signum)
            time.sleep(0.005)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr.seek(0)
    errors = stderr.read()
    assert code == 128 + signum, errors
    assert "Traceback" not in errors and "Exception ignored" not in errors, errors

    end = [r for r in read_metrics(run_dir) if r["type"] == "end"]
    assert len(end) == 1 and end[0]["reason"] == "interrupted" and end[0]["exit_signal"] == signum
    stopped_at = end[0]["steps"]
    assert after_steps <= stopped_at < 28
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))
    assert state["loop"]["step"] == stopped_at

    resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at epoch {state['loop']['epoch']}, step {stopped_at}" in resumed.stdout
    assert step_records(run_dir) == want  # every step exactly once, the same losses bit for bit
    assert [r["reason"] for r in read_metrics(run_dir) if r["type"] == "end"] == ["interrupted", "completed"]


def catches(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when handlers are set")
def test_signal_during_set_up_still_ends_cleanly(uninterrupted, tmp_path):
    """A SIGTERM as soon as the handler is in place — while torch imports, before any step —
    ends with a resumable step-0 checkpoint, not a kill."""
    corpus, _ = uninterrupted
    run_dir = tmp_path / "run"
    process = subprocess.Popen(cli("--data", str(corpus), "--run-dir", str(run_dir), *FLAGS),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not catches(process.pid, signal.SIGTERM):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    assert not (run_dir / "metrics.jsonl").exists()  # still setting up
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    end = [r for r in read_metrics(run_dir) if r["type"] == "end"]
    assert [r["reason"] for r in end] == ["interrupted"]
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))["loop"]["step"] == end[0]["steps"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when handlers are set")
def test_signal_while_the_app_sets_up_saves_without_taking_the_terminal(uninterrupted, tmp_path):
    """The app face, in a real pseudo-terminal: a SIGTERM while it builds the model (the app may
    already show) still ends with a resumable step-0 checkpoint and an `end` record."""
    corpus, _ = uninterrupted
    run_dir = tmp_path / "run"
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    process = subprocess.Popen([sys.executable, "-m", "tui_trainer.cli.main", "--data", str(corpus), "--run-dir",
                                str(run_dir), *FLAGS], stdin=slave, stdout=slave, stderr=slave, env=env,
                               start_new_session=True)
    os.close(slave)
    try:
        deadline = time.monotonic() + 60
        while not catches(process.pid, signal.SIGTERM):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        assert not (run_dir / "metrics.jsonl").exists()  # still setting up
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        output = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side is closed: all read
                break
            if not chunk:
                break
            output += chunk
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    text = output.decode("utf-8", "replace")
    assert "Traceback" not in text
    # The app shows before set-up ends; a signal that comes once it has taken the screen gives it back.
    assert "\x1b[?1049h" not in text or text.rindex("\x1b[?1049l") > text.rindex("\x1b[?1049h")
    assert "--resume" in text
    end = [r for r in read_metrics(run_dir) if r["type"] == "end"]
    assert [r["reason"] for r in end] == ["interrupted"]
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))["loop"]["step"] == end[0]["steps"] == 0


def exited(pid: int) -> bool:
    """Gone, or a zombie nobody reaped (the tmux server that started it is gone too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.slow  # a few seconds each: a terminal, the app, and a resume
@pytest.mark.skipif(not has_tmux(), reason="needs tmux")
@pytest.mark.parametrize("face", ["app", "headless"])
def test_killing_the_tmux_session_mid_run_leaves_a_resumable_run(face, uninterrupted, tmp_path):
    """The SSH-drop case for real: the run is the process of a tmux pane (the app owns that
    terminal, or the headless log writes to it) and the session is killed: SIGHUP with the
    terminal gone. The run dir must hold `end` (interrupted, SIGHUP) and a checkpoint that
    resumes bit for bit."""
    corpus, want = uninterrupted
    run_dir = tmp_path / "run"
    socket = f"tui-trainer-test-{os.getpid()}-{face}"
    args = cli("--data", str(corpus), "--run-dir", str(run_dir), *FLAGS)
    if face == "app":
        args.remove("--no-ui")
    started = tmux(socket, "new-session", "-d", "-s", "run", "-x", "100", "-y", "30", "-c", str(Path.cwd()),
                   "exec " + " ".join(args))
    assert started.returncode == 0, started.stderr
    try:
        pid = int(tmux(socket, "list-panes", "-t", "run", "-F", "#{pane_pid}").stdout.split()[0])
        deadline = time.monotonic() + 60
        while count_steps(run_dir / "metrics.jsonl") < 6:
            assert not exited(pid), "the run ended before the session was killed"
            assert time.monotonic() < deadline, tmux(socket, "capture-pane", "-p", "-t", "run").stdout
            time.sleep(0.005)
        if face == "app":
            screen = tmux(socket, "capture-pane", "-p", "-t", "run").stdout
            assert "tui-trainer" in screen and "loss" in screen  # it really is the app on that terminal
        tmux(socket, "kill-session", "-t", "run")
        while not exited(pid):
            assert time.monotonic() < deadline + 30, "still running 30 s after its terminal went away"
            time.sleep(0.01)
    finally:
        tmux(socket, "kill-server")
    end = [r for r in read_metrics(run_dir) if r["type"] == "end"]
    assert len(end) == 1 and end[0]["reason"] == "interrupted" and end[0]["exit_signal"] == signal.SIGHUP
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))
    assert state["loop"]["step"] == end[0]["steps"] >= 6

    if face == "headless":
        resumed = subprocess.run(cli("--resume", str(run_dir)), capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    else:  # --resume through the app too; once the run has completed, closing the session closes it
        resume_in_app(socket, run_dir)
    assert step_records(run_dir) == want
    assert [r["reason"] for r in read_metrics(run_dir) if r["type"] == "end"] == ["interrupted", "completed"]


def resume_in_app(socket: str, run_dir: Path) -> None:
    command = "exec " + " ".join(a for a in cli("--resume", str(run_dir)) if a != "--no-ui")
    started = tmux(socket, "new-session", "-d", "-s", "resume", "-x", "100", "-y", "30", "-c", str(Path.cwd()),
                   command)
    assert started.returncode == 0, started.stderr
    try:
        pid = int(tmux(socket, "list-panes", "-t", "resume", "-F", "#{pane_pid}").stdout.split()[0])
        deadline = time.monotonic() + 90
        while '"reason": "completed"' not in (run_dir / "metrics.jsonl").read_text():
            assert not exited(pid), "the resumed app ended early"
            assert time.monotonic() < deadline, tmux(socket, "capture-pane", "-p", "-t", "resume").stdout
            time.sleep(0.02)
        tmux(socket, "kill-session", "-t", "resume")
        while not exited(pid):
            assert time.monotonic() < deadline + 30, "the finished app did not close with its session"
            time.sleep(0.01)
    finally:
        tmux(socket, "kill-server")


@pytest.mark.slow  # a few seconds each: a terminal, the app, and a resume
@pytest.mark.skipif(not has_tmux(), reason="needs tmux")
@pytest.mark.parametrize("when", ["after_the_run_finished", "third_signal"])
def test_the_app_exits_on_signals_and_gives_the_terminal_back(when, uninterrupted, tmp_path):
    """A signal to an app that shows a finished run closes it (nothing else would); three signals
    exit at once, and even then the terminal leaves the alternate screen and mouse mode."""
    corpus, _ = uninterrupted
    run_dir = tmp_path / "run"
    socket = f"tui-trainer-test-{os.getpid()}-{when}"
    args = [a for a in cli("--data", str(corpus), "--run-dir", str(run_dir), *FLAGS) if a != "--no-ui"]
    args += ["--epochs", "1"] if when == "after_the_run_finished" else []
    rc_file = tmp_path / "rc"
    # A shell records the app's exit code (tmux 3.3 sometimes never reaps a pane's process, so its
    # pane_dead_status cannot be relied on); the pane stays after exit to show the terminal's modes.
    tmux(socket, "new-session", "-d", "-s", "run", "-x", "100", "-y", "30", "-c", str(Path.cwd()))
    try:
        tmux(socket, "set-option", "-t", "run", "remain-on-exit", "on")
        tmux(socket, "respawn-pane", "-k", "-t", "run", f"sh -c '{' '.join(args)}; echo $? > {rc_file}'")
        shell = int(tmux(socket, "list-panes", "-t", "run", "-F", "#{pane_pid}").stdout.split()[0])
        deadline = time.monotonic() + 60
        children = Path(f"/proc/{shell}/task/{shell}/children")
        while not children.read_text().split():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        pid = int(children.read_text().split()[0])
        metrics = run_dir / "metrics.jsonl"
        if when == "after_the_run_finished":
            while '"type": "end"' not in (metrics.read_text() if metrics.exists() else ""):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.5)  # the app has shown the end and now waits for a key
            assert not exited(pid)
            os.kill(pid, signal.SIGTERM)
        else:
            while count_steps(metrics) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            for _ in range(3):
                os.kill(pid, signal.SIGTERM)
                time.sleep(0.05)  # signals sent together would merge into one
        while not (rc_file.exists() and rc_file.read_text().strip()):
            assert time.monotonic() < deadline + 30, "the app did not exit"
            time.sleep(0.01)
        modes = tmux(socket, "display-message", "-p", "-t", "run", "#{alternate_on} #{mouse_any_flag}").stdout.split()
    finally:
        tmux(socket, "kill-server")
    expected_code = "0" if when == "after_the_run_finished" else str(128 + signal.SIGTERM)
    assert rc_file.read_text().strip() == expected_code
    assert modes == ["0", "0"]  # back on the normal screen, mouse reporting off
