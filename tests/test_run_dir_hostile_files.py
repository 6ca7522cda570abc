"""A run dir's files are input, not truth: what a hostile (or unlucky) user puts in one — our names
over their own files, a deleted lock file, a reused pid, damaged metrics or config — never costs
data and never ends in a traceback. Real files, real locks, the real CLI in a subprocess where the
exit code is the point."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from metrics_records import line

from tui_trainer.errors import UserError
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir import lock as lock_module
from tui_trainer.rundir.files import (
    ALL_NAMES,
    CONFIG_FILE,
    LOCK_FILE,
    MARKER_FILE,
    METRICS_FILE,
    SET_ASIDE_FILE,
    SOCKET_FILE,
)
from tui_trainer.rundir.lifecycle import trim_metrics_after
from tui_trainer.rundir.lock import LockLost, RunLock, live_holder, refuse_if_in_use
from tui_trainer.rundir.ownership import foreign_name
from tui_trainer.rundir.reader import read_metrics_file, read_run_config

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--micro-batch", "4",
        "--accum", "2", "--threads", "1", "--limit-train-batches", "2", "--limit-val-batches", "1", "--patience", "0"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui_trainer", *args], capture_output=True, text=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def snapshot(folder: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_socket() else p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


# -- our names, their files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", [LOCK_FILE, SOCKET_FILE])
def test_a_lock_or_socket_name_in_a_folder_not_ours_is_refused_and_left_as_it_was(name, small_corpus, tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / name).write_text("precious\n")
    before = snapshot(project)
    result = cli("train", "--no-ui", "--data", str(small_corpus), *TINY, "--epochs", "1", "--run-dir", str(project))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"holds a {name} not written by tui-trainer" in result.stderr
    assert snapshot(project) == before


@pytest.mark.parametrize("beside", ["nothing", "an older run's config.json"])
def test_a_users_file_named_like_our_marker_is_refused_not_written_over(beside, small_corpus, tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / MARKER_FILE).write_text("my notes\n")
    if beside != "nothing":
        (project / CONFIG_FILE).write_text(json.dumps({"config": {"model": {}, "data": {}, "train": {}},
                                                       "vocab": [], "data_sha256": "0"}))
    before = snapshot(project)
    result = cli("train", "--no-ui", "--data", str(small_corpus), *TINY, "--epochs", "1", "--run-dir", str(project))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"holds a {MARKER_FILE} not written by tui-trainer" in result.stderr
    assert snapshot(project) == before


def test_the_refusal_reads_an_error_log(small_corpus, tmp_path):
    (tmp_path / "error.log").write_text("mine")
    result = cli("train", "--no-ui", "--data", str(small_corpus), *TINY, "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "holds an error.log not written by tui-trainer" in result.stderr, result.stderr


def test_every_name_in_files_is_refused_in_a_folder_not_ours(tmp_path):
    for name in ALL_NAMES:
        folder = tmp_path / name.strip(".")
        folder.mkdir()
        (folder / name).write_text("mine")
        assert foreign_name(folder) == name, name


def test_a_released_lock_file_and_a_dead_socket_are_a_runs_leftovers_not_a_users_files(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")  # released
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / SOCKET_FILE))  # bound, never listening: a killed run's
    server.close()
    assert foreign_name(tmp_path) is None
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "h", "started": "2026-01-01T00:00:00"}))
    assert foreign_name(tmp_path) is None  # a kill -9'd run's description
    live = socket.socket(socket.AF_UNIX)
    (tmp_path / SOCKET_FILE).unlink()
    live.bind(str(tmp_path / SOCKET_FILE))
    live.listen(1)
    try:
        assert foreign_name(tmp_path) == SOCKET_FILE  # someone listens on it: not ours to rename over
    finally:
        live.close()


# -- a lock held by a path ----------------------------------------------------------------------------

def test_a_deleted_lock_file_lets_no_second_writer_in_and_the_holder_takes_it_back(tmp_path):
    held = RunLock(tmp_path)
    try:
        (tmp_path / LOCK_FILE).unlink()
        with pytest.raises(UserError, match="in use by a training process"):
            RunLock(tmp_path)
        with pytest.raises(UserError, match="lock file does not say which"):
            refuse_if_in_use(tmp_path)
        assert live_holder(tmp_path).pid == 0
        held.check_still_held()  # (before a save) the folder's lock is ours: the file comes back
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert live_holder(tmp_path).pid == os.getpid()
    finally:
        held.release()
    assert live_holder(tmp_path) is None
    RunLock(tmp_path).release()


@pytest.fixture
def no_directory_locks(monkeypatch):
    """A file system that cannot flock a directory (some network mounts)."""
    real = fcntl.flock

    def flock(fd, operation):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real(fd, operation)

    monkeypatch.setattr(lock_module.fcntl, "flock", flock)


def test_without_a_folder_lock_a_deleted_lock_file_stops_the_saves(no_directory_locks, tmp_path):
    held = RunLock(tmp_path)
    try:
        ckpt.save_atomic({"a": 1}, ckpt.checkpoint_path(tmp_path))
        (tmp_path / LOCK_FILE).unlink()
        with pytest.raises(ckpt.CheckpointWriteError, match="not saving"):
            ckpt.save_atomic({"a": 2}, ckpt.checkpoint_path(tmp_path))
        assert not list(ckpt.checkpoint_path(tmp_path).parent.glob(".latest.pt.tmp-*"))
        second = RunLock(tmp_path)  # nothing could tell it: the deleted file's lock is invisible
        with pytest.raises(LockLost, match="deleted or replaced"):
            held.check_still_held()  # ... but the first one never writes again
        second.release()
    finally:
        held.release()


def test_a_run_dir_moved_away_and_replaced_is_lost_not_written_into(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    held = RunLock(run_dir)
    try:
        run_dir.rename(tmp_path / "moved")
        run_dir.mkdir()
        with pytest.raises(ckpt.CheckpointWriteError, match="moved, deleted or replaced"):
            ckpt.save_atomic({"a": 1}, ckpt.checkpoint_path(run_dir))
        assert not (run_dir / "checkpoints").exists()
    finally:
        held.release()


def test_a_live_pid_in_a_lock_nobody_holds_is_not_a_live_run(tmp_path):
    """Pids are reused: the lock file of a kill -9'd run may name a process that lives (here, this one)."""
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": "2026-01-01T00:00:00"}))
    assert live_holder(tmp_path) is None
    refuse_if_in_use(tmp_path)


# -- metrics.jsonl: one reader, one policy --------------------------------------------------------------

BAD_LINES = {
    "an array": (b"[1,2,3]", "a JSON list, not an object"),
    "a null loss": (line("step", loss=None).strip().encode(), "its loss is null"),
    "a string count": (line("epoch", epoch="2").strip().encode(), "its epoch is str"),
    "a bool count": (line("step", step=True).strip().encode(), "its step is true"),
    "a negative step": (line("step", step=-4).strip().encode(), "its step is -4"),
    "invalid UTF-8": (b'{"type": "step", "\xff": 1}', "not UTF-8"),
    "not JSON": (b"hello", "not JSON"),
    "deep nesting": (b"[" * 100_000, "not JSON"),
    "no type": (b'{"step": 1}', "no record type"),
    "a field missing": (b'{"type": "step", "step": 1}', "a step record without"),
}


@pytest.mark.parametrize("bad, problem", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_is_named_by_its_number_and_a_torn_last_line_is_not(bad, problem, tmp_path):
    (tmp_path / METRICS_FILE).write_bytes(line("step").encode() + bad + b"\n" + line("step", step=2).encode()
                                          + b'{"type": "ste')
    metrics = read_metrics_file(tmp_path)
    assert [e.step for e in metrics.events] == [1, 2]
    assert [(b.number, problem in b.problem) for b in metrics.bad] == [(2, True)], metrics.bad
    assert metrics.torn == b'{"type": "ste'


def test_a_last_record_without_its_newline_is_kept(tmp_path):
    (tmp_path / METRICS_FILE).write_text(line("step") + line("step", step=2).strip())
    assert [e.step for e in read_metrics_file(tmp_path).events] == [1, 2]


def test_a_resume_trim_sets_bad_lines_aside_and_says_so(tmp_path):
    good = [line("step", step=1), line("epoch", epoch=1), line("step", step=2)]
    (tmp_path / METRICS_FILE).write_bytes(good[0].encode() + b"[1,2,3]\n" + good[1].encode() + b"\xff\xfe\n"
                                          + good[2].encode() + line("step", step=3).encode() + b'{"type"')
    notes: list[str] = []
    trim_metrics_after(tmp_path, step=2, epochs_done=1, notes=notes)
    assert (tmp_path / METRICS_FILE).read_text() == "".join(good)  # step 3 is beyond the checkpoint
    assert (tmp_path / SET_ASIDE_FILE).read_bytes() == b"[1,2,3]\n\xff\xfe\n"
    assert len(notes) == 1 and "line 2 (a JSON list, not an object), line 4 (not UTF-8 text)" in notes[0], notes
    trim_metrics_after(tmp_path, step=2, epochs_done=1, notes=notes)  # nothing more to set aside
    assert len(notes) == 1


# -- config.json --------------------------------------------------------------------------------------

CONFIGS = {
    "truncated": (b'{"config": {"model": {"n_la', "not JSON"),
    "invalid UTF-8": (b'{"config": {}, "x": "\xff"}', "not UTF-8"),
    "an array": (b"[1, 2, 3]", "no table of settings"),
    "a section not a table": (b'{"config": {"model": 3}}', "model is not a table"),
    "a setting of the wrong type": (b'{"config": {"model": {"block_size": "big"}}}', "block_size"),
    "a zero size": (b'{"config": {"train": {"micro_batch": 0}}}', "train.micro_batch is 0"),
    "a size beyond any run": (b'{"config": {"model": {"block_size": 1e400}}}', "block_size"),
    "a count beyond any run": (b'{"config": {"train": {"epochs": 99999999999999999999}}}', "train.epochs is"),
}


@pytest.mark.parametrize("content, words", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_damaged_config_json_is_one_line_naming_the_file_and_the_fix(content, words, tmp_path):
    (tmp_path / CONFIG_FILE).write_bytes(content)
    with pytest.raises(UserError, match=words) as caught:
        read_run_config(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in caught.value.message and "--resume" in caught.value.hint


def test_view_of_a_run_with_a_truncated_config_json_exits_2_with_one_line(tmp_path):
    (tmp_path / CONFIG_FILE).write_bytes(CONFIGS["truncated"][0])
    result = cli("view", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is not a run's config" in result.stderr


@pytest.mark.parametrize("tokenizer_part", [{"vocab": "abc"}, {"vocab": []}, {"tokenizer": 5, "vocab": ["a"]},
                                            {"tokenizer": {"kind": "bpe"}, "vocab": []}])
def test_a_config_json_whose_tokenizer_is_damaged_is_one_line(tokenizer_part, tmp_path):
    from tui_trainer.rundir.tokenizer_record import vocabulary_of

    (tmp_path / CONFIG_FILE).write_text(json.dumps({"config": {}, **tokenizer_part}))
    with pytest.raises(UserError, match="does not describe the run's tokenizer"):
        vocabulary_of(tmp_path)


def test_under_the_run_dir_lock_a_temp_checkpoint_named_for_a_reused_pid_is_cleared(tmp_path):
    """A save that died left `.latest.pt.tmp-PID`; that pid now belongs to a live process (here,
    pid 1). The lock says no other process writes here: it is stale all the same."""
    folder = ckpt.checkpoint_path(tmp_path).parent
    folder.mkdir()
    (folder / ".latest.pt.tmp-1").write_bytes(b"half a checkpoint")
    ckpt.save_atomic({"a": 1}, ckpt.checkpoint_path(tmp_path))
    assert (folder / ".latest.pt.tmp-1").exists()  # no lock held: pid 1 lives, so it might be writing
    held = RunLock(tmp_path)
    try:
        ckpt.save_atomic({"a": 2}, ckpt.checkpoint_path(tmp_path))
    finally:
        held.release()
    assert sorted(p.name for p in folder.iterdir()) == ["latest.pt"]


def test_a_fifo_or_a_symlink_named_lock_is_nobodys_description_and_blocks_no_reader(tmp_path):
    os.mkfifo(tmp_path / LOCK_FILE)
    assert live_holder(tmp_path) is None and foreign_name(tmp_path) == LOCK_FILE
    (tmp_path / LOCK_FILE).unlink()
    (tmp_path / "elsewhere").write_text(json.dumps({"pid": 1, "host": "h", "started": "s"}))
    (tmp_path / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    assert lock_module.read_holder(tmp_path) is None and foreign_name(tmp_path) == LOCK_FILE
    with pytest.raises(UserError, match="its .lock is a symbolic link") as caught:
        RunLock(tmp_path)
    assert "plain file" in caught.value.hint
