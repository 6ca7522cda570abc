"""Checkpoints: atomic save that survives a full disk, and a load that turns every unusable file
(missing, truncated, corrupt, from a newer version, for other data) into one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL, tiny_config, with_limits

from tui_trainer.cli.faces import exit_code_for
from tui_trainer.cli.main import main
from tui_trainer.engine.loop import Trainer
from tui_trainer.errors import UserError
from tui_trainer.events import CheckpointFailed, CheckpointSaved, ListSink, MicroStep, Notice, RunEnded, StepEvent
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir.metrics import read_metrics

TINY = [*TINY_MODEL, "--limit-train-batches", "6", "--limit-val-batches", "2"]


# -- mounts (we run as root in CI; where mounting is not allowed, those tests skip and say why) --

@pytest.fixture
def mount_tmpfs(tmp_path):
    mounted: list[Path] = []

    def mount(size: str, options: str = "") -> Path:
        target = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
        target.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}); "
                        "needs root or CAP_SYS_ADMIN")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system that holds ``directory``."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


# -- save ------------------------------------------------------------------------------------

def test_save_writes_via_a_temp_file_and_leaves_no_temp_behind(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, "latest")
    for value in range(3):
        ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION, "value": torch.tensor(value)}, path)
    assert torch.load(path, weights_only=True)["value"].item() == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]


def test_save_writes_the_temp_file_fsyncs_it_renames_it_then_fsyncs_the_directory(tmp_path, monkeypatch):
    """The order that makes a save atomic and durable, pinned with a spy on the os calls (the real
    calls still run): the data reaches the disk before the rename can expose it under the real name."""
    path = ckpt.checkpoint_path(tmp_path, "latest")
    path.parent.mkdir(parents=True)
    tmp = path.with_name(f".latest.pt.tmp-{os.getpid()}")
    calls: list[tuple[str, str]] = []
    real_write, real_fsync, real_replace = os.write, os.fsync, os.replace

    def target(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def spy_write(fd, data):
        calls.append(("write", target(fd)))
        return real_write(fd, data)

    def spy_fsync(fd):
        calls.append(("fsync", target(fd)))
        return real_fsync(fd)

    def spy_replace(src, dst):
        calls.append(("replace", f"{src} -> {dst}"))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "write", spy_write)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION, "value": torch.tensor(1)}, path)
    monkeypatch.undo()
    kinds = [kind for kind, _ in calls]
    writes = [i for i, kind in enumerate(kinds) if kind == "write"]
    assert writes and all(calls[i][1] == str(tmp) for i in writes)  # the data goes to the temp file only
    file_sync = kinds.index("fsync")
    rename = kinds.index("replace")
    assert calls[file_sync] == ("fsync", str(tmp)) and max(writes) < file_sync < rename
    assert calls[rename] == ("replace", f"{tmp} -> {path}")
    assert ("fsync", str(path.parent)) in calls[rename + 1:]  # the rename itself made durable
    assert torch.load(path, weights_only=True)["value"].item() == 1


def test_stale_temp_files_of_dead_processes_are_cleaned_up(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, "latest")
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = path.with_name(f".latest.pt.tmp-{dead.stdout.strip()}")
    stale.write_bytes(b"half a checkpoint")
    ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION}, path)
    assert not stale.exists() and path.exists()


@pytest.mark.parametrize("room", ["none", "some"])
def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(room, mount_tmpfs):
    """"none": not a byte free; "some": the write gets part way (torch's own writer then raised
    an opaque RuntimeError and left its temp file taking the rest of the disk)."""
    disk = mount_tmpfs("1m")
    path = ckpt.checkpoint_path(disk, "latest")
    ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION, "weights": torch.ones(1000)}, path)
    filler = fill(disk)
    if room == "some":
        filler.write_bytes(b"\0" * (filler.stat().st_size - 200_000))
    with pytest.raises(ckpt.CheckpointWriteError, match="No space left on device"):
        ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION, "weights": torch.zeros(100_000)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(1000))
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]  # no half-written temp file
    filler.unlink()
    ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION, "weights": torch.zeros(100_000)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.zeros(100_000))


def test_a_checkpoint_dir_that_cannot_be_created_is_a_write_error_not_a_crash(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the directory should be")
    with pytest.raises(ckpt.CheckpointWriteError):
        ckpt.save_atomic({"format_version": ckpt.FORMAT_VERSION}, ckpt.checkpoint_path(tmp_path))


class DiskFiller(ListSink):
    """Fills ``disk`` once the checkpoint of ``after_step`` is saved; ``then(event, sink)`` sees
    every event from then on (to free the space and ask for a save, as the app's `s` does)."""

    def __init__(self, disk: Path, after_step: int, then) -> None:
        super().__init__()
        self.disk, self.after_step, self.then = disk, after_step, then
        self.filler: Path | None = None
        self.trainer: Trainer | None = None

    def emit(self, event) -> None:
        super().emit(event)
        if isinstance(event, CheckpointSaved) and event.step == self.after_step and self.filler is None:
            self.filler = fill(self.disk)
        elif self.filler is not None:
            self.then(event, self)

    def free_space_and_press_s(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.trainer.control.save()


def test_disk_filling_mid_run_keeps_training_and_the_last_checkpoint_and_a_retry_saves(small_corpus,
                                                                                       mount_tmpfs):
    """The run dir's disk fills after step 3's checkpoint: saves fail loudly, training goes on,
    `latest` still holds step 3; once space is freed, asking for a save (the app's `s`) works."""
    disk = mount_tmpfs("4m")
    run_dir = disk / "run"

    def at_step_7_free_space_and_press_s(event, sink: DiskFiller) -> None:
        if isinstance(event, StepEvent) and event.step == 7:
            assert [e.step for e in sink.of(CheckpointSaved)] == [3]  # step 6's periodic save failed
            assert ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))["loop"]["step"] == 3
            sink.free_space_and_press_s()

    sink = DiskFiller(disk, after_step=3, then=at_step_7_free_space_and_press_s)
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=1, checkpoint_every=3), 20)
    trainer = sink.trainer = Trainer(cfg, sink)
    end = trainer.run()
    assert end.reason == "completed" and trainer.error is None
    failed = sink.of(CheckpointFailed)
    assert len(failed) == 1 and "No space left on device" in failed[0].message
    assert [e.step for e in sink.of(CheckpointSaved) if e.kind == "latest"] == [3, 8, 9, 10]  # 8: the retry
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))
    assert state["loop"]["step"] == 10 and state["loop"]["epoch"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "latest.pt"]
    # Metrics written while the disk was full were kept in memory and written once space came back.
    steps = [r["step"] for r in read_metrics(run_dir) if r["type"] == "step"]
    assert steps == list(range(1, 11))


def test_stop_on_a_full_disk_says_the_save_failed_and_the_previous_checkpoint_stays(small_corpus, mount_tmpfs):
    disk = mount_tmpfs("4m")
    run_dir = disk / "run"

    class FillThenStop(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, CheckpointSaved) and event.step == 2:
                fill(disk)
            if isinstance(event, MicroStep) and (event.step, event.micro_step) == (3, 1):
                trainer.control.stop("interrupted")

    sink = FillThenStop()
    trainer = Trainer(with_limits(tiny_config(small_corpus, run_dir, epochs=1, checkpoint_every=2), 16), sink)
    end = trainer.run()
    assert end.reason == "interrupted"
    assert "could not be saved (No space left on device)" in end.message
    assert "previous checkpoint (step 2) is intact" in end.message
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))["loop"]["step"] == 2


FINAL_SAVE_NOTICE = "final checkpoint could not be saved"


@pytest.mark.parametrize("face", ["headless", "app: s once space is free", "app: q"])
def test_a_run_whose_final_checkpoint_cannot_be_saved_does_not_end_as_a_success(face, small_corpus, mount_tmpfs):
    """The disk fills after step 2's save and stays full to the end. Headless, the run ends as an
    error naming the step on disk (exit 1, not a quiet 0). In the app the engine waits: `s` half a
    second later, once space is freed, saves the final state and the run completes; `q` leaves
    without it, as an error."""
    disk = mount_tmpfs("4m")
    run_dir = disk / "run"
    pressed: list[float] = []

    def answer_the_final_save_notice(event, sink: DiskFiller) -> None:
        if isinstance(event, Notice) and FINAL_SAVE_NOTICE in event.message:
            if face == "app: q":
                sink.trainer.control.stop("interrupted")
            else:  # from another thread, later: the engine must be waiting for it
                threading.Timer(0.5, lambda: (pressed.append(time.monotonic()), sink.free_space_and_press_s())).start()

    sink = DiskFiller(disk, after_step=2, then=answer_the_final_save_notice)
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=1, checkpoint_every=2), 12)
    trainer = sink.trainer = Trainer(cfg, sink, for_ui=face != "headless")
    end = trainer.run()
    ended = time.monotonic()
    on_disk = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))["loop"]
    if face == "app: s once space is free":
        assert pressed and ended > pressed[0]
        assert end.reason == "completed" and on_disk["step"] == end.steps == 6 and on_disk["epoch"] == 2
    else:
        assert end.reason == "error" and exit_code_for(end) == 1
        assert "final checkpoint could not be saved (No space left on device)" in end.message
        assert "last checkpoint on disk is from step 2" in end.message and on_disk["step"] == 2
        assert (face == "headless") == (not any(isinstance(e, Notice) and FINAL_SAVE_NOTICE in e.message
                                                for e in sink.events))


def test_an_early_stop_whose_save_is_retried_keeps_the_runs_own_weights_in_latest(small_corpus, mount_tmpfs):
    """Early stop at epoch 2 (patience 1, a min-delta nothing beats) on a full disk, then `s`:
    `latest` must hold epoch 2's weights with epoch 2's optimizer and position — the best weights
    (epoch 1) come back into the model only after that save."""
    disk = mount_tmpfs("4m")
    run_dir = disk / "run"
    steps_per_epoch = 3

    def answer(event, sink: DiskFiller) -> None:
        if isinstance(event, Notice) and FINAL_SAVE_NOTICE in event.message:
            sink.free_space_and_press_s()

    sink = DiskFiller(disk, after_step=steps_per_epoch, then=answer)  # full once epoch 1 is saved
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=5, patience=1, min_delta=100.0), 2 * steps_per_epoch)
    trainer = sink.trainer = Trainer(cfg, sink, for_ui=True)
    end = trainer.run()
    assert end.reason == "early_stop" and end.best_epoch == 1
    latest = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))
    best = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, "best"))
    assert latest["loop"]["epoch"] == 3 and latest["loop"]["step"] == 2 * steps_per_epoch
    assert best["loop"]["step"] == steps_per_epoch
    assert any(not torch.equal(latest["model"][k], best["model"][k]) for k in best["model"])
    assert all(torch.equal(v, best["model"][k]) for k, v in trainer.model.state_dict().items())


def test_read_only_run_dir_is_refused_at_start(small_corpus, mount_tmpfs, capsys):
    disk = mount_tmpfs("1m", "ro")
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(disk), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "not writable" in err


def test_run_dir_under_a_file_is_refused_at_start(small_corpus, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(tmp_path / "afile" / "run"), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "cannot create run dir" in err


# -- load ------------------------------------------------------------------------------------

@pytest.fixture
def saved_run(small_corpus, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    code = main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY])
    assert code == 0
    return run_dir


def resume_error(run_dir: Path, capsys, *extra: str) -> str:
    code = main(["--no-ui", "--resume", str(run_dir), "--epochs", "2", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("error: ")
    return err


def damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage_flip_weight_byte(path: Path) -> None:
    # A bit flip in the middle of the file lands in tensor data, which torch.load alone accepts.
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_empty(path: Path) -> None:
    path.write_bytes(b"")


def damage_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip_weight_byte, damage_empty, damage_garbage])
def test_damaged_checkpoint_is_one_line_and_exit_2(damage, saved_run, capsys):
    damage(ckpt.checkpoint_path(saved_run))
    err = resume_error(saved_run, capsys)
    assert "corrupt or truncated" in err


def test_every_byte_flip_is_caught_or_harmless(saved_run):
    """Flip bytes all over the file: load either refuses it or returns exactly what was saved."""
    path = ckpt.checkpoint_path(saved_run)
    original = path.read_bytes()
    good = torch.load(path, weights_only=True)
    refused = 0
    for position in range(0, len(original), max(1, len(original) // 97)):
        data = bytearray(original)
        data[position] ^= 0x5A
        path.write_bytes(bytes(data))
        try:
            state = ckpt.load_checkpoint(path)
        except UserError:
            refused += 1
            continue
        for name, tensor in good["model"].items():
            assert torch.equal(state["model"][name], tensor), (position, name)
    assert refused > 80


def test_checkpoint_from_a_newer_format_is_refused(saved_run, capsys):
    path = ckpt.checkpoint_path(saved_run)
    state = torch.load(path, weights_only=True)
    state["format_version"] = ckpt.FORMAT_VERSION + 1
    torch.save(state, path)
    err = resume_error(saved_run, capsys)
    assert f"format version {ckpt.FORMAT_VERSION + 1}" in err and "upgrade" in err


def test_checkpoint_missing_a_part_is_refused(saved_run, capsys):
    path = ckpt.checkpoint_path(saved_run)
    state = torch.load(path, weights_only=True)
    del state["optimizer"]
    torch.save(state, path)
    assert "optimizer" in resume_error(saved_run, capsys)


def test_something_else_saved_with_torch_is_refused(saved_run, capsys):
    torch.save({"weights": torch.ones(3)}, ckpt.checkpoint_path(saved_run))
    assert "not a tui-trainer checkpoint" in resume_error(saved_run, capsys)


def test_run_dir_without_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no checkpoint" in resume_error(tmp_path / "empty", capsys)


def test_resume_with_a_data_file_of_other_contents_is_refused(saved_run, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text(Path(ckpt.load_checkpoint(ckpt.checkpoint_path(saved_run))["data_path"]).read_text() + "x")
    err = resume_error(saved_run, capsys, "--data", str(other))
    assert "is not the one this run trained on" in err


def test_resume_with_another_model_shape_is_refused(saved_run, capsys):
    err = resume_error(saved_run, capsys, "--n-embd", "64")
    assert "--n-embd 64 contradicts the checkpoint (32)" in err


def test_corrupt_checkpoint_through_the_real_process_has_no_traceback(saved_run):
    damage_truncate(ckpt.checkpoint_path(saved_run))
    result = subprocess.run([sys.executable, "-m", "tui_trainer.cli.main", "--no-ui", "--resume", str(saved_run)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "corrupt or truncated" in result.stderr


def test_metrics_written_while_the_disk_is_full_are_kept_and_written_once_there_is_room(mount_tmpfs):
    """A full disk must not end the run through its metrics file: lines wait in memory."""
    from tui_trainer.rundir.metrics import MetricsWriter

    disk = mount_tmpfs("1m")
    writer = MetricsWriter(disk)
    writer.emit(RunEnded(reason="interrupted", epochs=0, steps=0, tokens_seen=0, best_val_loss=None, best_epoch=None))
    filler = fill(disk)
    for steps in range(1, 101):  # ~15 KB: more than the slack in the file's last page
        writer.emit(RunEnded(reason="interrupted", epochs=0, steps=steps, tokens_seen=0, best_val_loss=None,
                             best_epoch=None, message="x" * 100))
    assert writer.write_error and "No space left on device" in writer.write_error
    filler.unlink()
    writer.emit(RunEnded(reason="completed", epochs=0, steps=101, tokens_seen=0, best_val_loss=None, best_epoch=None))
    writer.close()
    assert writer.write_error is None
    assert [r["steps"] for r in read_metrics(disk)] == list(range(0, 102))
