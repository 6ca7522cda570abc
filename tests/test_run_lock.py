"""One writer per run dir: a second training process is refused while the first lives, and a
kill -9 of the first leaves no stale lock (the kernel drops a flock with its process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_MODEL, ScriptedSink, stop, tiny_config, train, with_limits

from tui_trainer.engine.loop import Trainer
from tui_trainer.errors import UserError
from tui_trainer.events import CheckpointFailed, Notice
from tui_trainer.rundir import lifecycle as rd
from tui_trainer.rundir.lock import live_holder

TINY = [*TINY_MODEL, "--limit-train-batches", "4", "--limit-val-batches", "2", "--patience", "0"]


def train_command(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tui_trainer", "train", "--no-ui", "--data", str(corpus), *TINY, *extra,
            "--run-dir", str(run_dir)]


def start_long_run(corpus: Path, run_dir: Path) -> subprocess.Popen:
    """A headless run that goes on until killed; returned once it holds the lock and has saved."""
    process = subprocess.Popen(train_command(corpus, run_dir, "--epochs", "100000", "--checkpoint-every", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if live_holder(run_dir) and (run_dir / "checkpoints" / "latest.pt").exists():
            return process
        if process.poll() is not None:
            pytest.fail(f"the run ended early: {process.stderr.read().decode()}")
        time.sleep(0.1)
    process.kill()
    pytest.fail("the run never took its lock")


def test_a_second_trainer_is_refused_while_the_first_lives_and_accepted_after_kill_9(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    first = start_long_run(small_corpus, run_dir)
    try:
        holder = json.loads((run_dir / rd.LOCK_FILE).read_text())
        assert holder["pid"] == first.pid
        second = subprocess.run(train_command(small_corpus, run_dir, "--overwrite", "--epochs", "1"),
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "tui-trainer view" in lines[0], lines
        resumed = subprocess.run([sys.executable, "-m", "tui_trainer", "train", "--no-ui", "--resume", str(run_dir)],
                                 capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert resumed.returncode == 2 and f"pid {first.pid}" in resumed.stderr, resumed.stderr
        assert first.poll() is None  # the refusals never touched the live run
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert live_holder(run_dir) is None  # the file still names it, but its pid is gone
    again = subprocess.run(train_command(small_corpus, run_dir, "--overwrite", "--epochs", "1"), capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    assert (run_dir / rd.LOCK_FILE).read_text() == ""  # released at the end of the run


def test_a_trainer_in_this_process_holds_the_lock_until_its_run_ends(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2, 2)
    trainer = Trainer(cfg)
    assert live_holder(tmp_path / "run").pid == os.getpid()
    with pytest.raises(UserError, match="in use by a training process"):
        Trainer(cfg.replace(), overwrite=True)
    trainer.run()
    Trainer(cfg, overwrite=True).run()  # free again once the run ended


def test_a_refused_new_run_dir_is_left_without_a_lock_file(small_corpus, tmp_path):
    cfg = with_limits(tiny_config(small_corpus, tmp_path / "run", epochs=1), 2, 2)
    Trainer(cfg).run()
    (tmp_path / "run" / rd.LOCK_FILE).unlink()
    with pytest.raises(UserError, match="already holds a run"):
        Trainer(cfg)
    assert not (tmp_path / "run" / rd.LOCK_FILE).exists()


def test_overwrite_of_a_live_run_whose_lock_file_was_deleted_is_refused_and_the_run_takes_its_file_back(
        small_corpus, tmp_path):
    """`rm RUN/.lock` while the run trains: the run dir's own (folder) lock still holds it, so a
    second writer is refused, and the run's next save puts its lock file back."""
    run_dir = tmp_path / "run"
    first = start_long_run(small_corpus, run_dir)
    try:
        (run_dir / rd.LOCK_FILE).unlink()
        second = subprocess.run(train_command(small_corpus, run_dir, "--overwrite", "--epochs", "1"),
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert second.returncode == 2, second.stderr
        assert "in use by a training process" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert (run_dir / "checkpoints" / "latest.pt").exists() and first.poll() is None
        deadline = time.monotonic() + 60
        while not (run_dir / rd.LOCK_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # (--checkpoint-every 1: the next step's save takes it back)
        assert live_holder(run_dir).pid == first.pid
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    assert live_holder(run_dir) is None


def moved_away(run_dir: Path, moved: Path):
    def act(trainer) -> None:
        run_dir.rename(moved)
        run_dir.mkdir()  # (the next run's, say)
    return act


@pytest.mark.parametrize("ending", ["completed", "interrupted"])
def test_a_run_whose_dir_was_moved_away_ends_as_an_error_naming_where_its_last_checkpoint_is(
        small_corpus, tmp_path, ending):
    run_dir, moved = tmp_path / "run", tmp_path / "moved"
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=1, checkpoint_every=1), 8, 2)
    script = {2: moved_away(run_dir, moved)}
    if ending == "interrupted":
        script[3] = stop()
    _, sink, end = train(cfg, ScriptedSink(script))
    assert end.reason == "error"
    assert not sink.of(CheckpointFailed)  # (the faces would add "the previous checkpoint is intact")
    assert any("nothing more can be saved there" in n.message and n.level == "error" for n in sink.of(Notice))
    assert "moved, deleted or replaced" in end.message and "intact" not in end.message
    assert f"is in {moved / 'checkpoints' / 'latest.pt'}" in end.message
    assert end.next_step(str(run_dir)) is None
    assert not (run_dir / "checkpoints").exists()
    assert end.steps == (4 if ending == "completed" else 3), end.message  # (8 micro-batches, accum 2: 4 steps)
    assert end.message.startswith("training finished at step 4, but run dir" if ending == "completed"
                                  else "stopped after optimizer step 3 (epoch 1), but run dir"), end.message
    assert "its last checkpoint (step 1) is in" in end.message


def test_a_run_whose_dir_was_deleted_does_not_call_its_checkpoint_intact(small_corpus, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=1, checkpoint_every=1), 4, 2)
    _, _, end = train(cfg, ScriptedSink({2: lambda trainer: shutil.rmtree(run_dir)}))
    assert end.reason == "error" and "intact" not in end.message
    assert "went with it" in end.message
