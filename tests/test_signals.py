"""Signals against the real headless process: SIGTERM, SIGHUP and SIGINT at some micro-step end
the run with a `latest` checkpoint, an `end` record and exit 128+N; `--resume` then gives the
uninterrupted run's losses bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui_trainer import checkpoint as ckpt
from tui_trainer.cli import build_parser, config_from_args
from tui_trainer.engine import Trainer
from tui_trainer.events import ListSink
from tui_trainer.metrics import read_metrics

# 20 micro-batches, accum 3: 7 steps an epoch (the last a remainder window), dropout on.
FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
         "--accum", "3", "--threads", "1", "--limit-train-batches", "20", "--limit-val-batches", "4",
         "--dropout", "0.1", "--epochs", "4", "--lr", "3e-3", "--checkpoint-every", "5"]
STEP_KEYS = ("epoch", "step", "accum", "tokens", "loss", "lr", "grad_norm", "tokens_seen", "skipped")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tui_trainer.cli", "--no-ui", *args]


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
    args = build_parser().parse_args(["--no-ui", "--data", str(corpus), "--run-dir", str(base / "reference"), *FLAGS])
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
