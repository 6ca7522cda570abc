"""Checkpoints: atomic save (temp file + fsync + rename), validated load.

A crash at any moment leaves the previous checkpoint readable: the new one is written
to a temporary file in the same directory, flushed and fsynced, then renamed over the
old one (``os.replace`` is atomic on POSIX), and the directory entry is fsynced too.

The state is serialised in memory first and then written with plain file writes, so a
full disk or a lost mount is an ``OSError`` with its errno (torch's own writer turns a
short write into an opaque ``RuntimeError``) and never leaves a half-written temp file.
On load, the zip CRCs torch writes are checked before unpickling: torch.load alone
accepts a flipped byte in tensor data and returns wrong weights.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from tui_trainer.errors import UserError
from tui_trainer.rundir.files import CHECKPOINT_DIR, checkpoint_name
from tui_trainer.rundir.lock import LockLost, held_lock

# 1: the first format. 2: `loop.elapsed_seconds` (the run's wall time) and `loop.last_verdict`. Older
# versions still load (a missing field takes its default); a newer one is refused with "upgrade tui-trainer".
FORMAT_VERSION = 2
# What the engine needs to resume; a checkpoint without one of these cannot be used.
REQUIRED_KEYS = ("model", "optimizer", "early_stopping", "loop", "rng", "config", "vocab", "data_sha256")


class CheckpointWriteError(Exception):
    """Saving failed (disk full, permissions); the previous checkpoint is untouched."""


def checkpoint_path(run_dir: str | Path, kind: str = "latest") -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / checkpoint_name(kind)


def _temp_path(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def _remove_stale_temp_files(path: Path) -> None:
    """Temp files of processes that died mid-write (kill -9, power loss); ours are gone already.
    While this process holds the run dir's lock no other one writes there, so every other temp
    file is stale; without the lock (a save outside a run) only those whose process is gone are."""
    locked = held_lock(path.parent.parent) is not None
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid() or not stale.is_file() or stale.is_symlink():
            continue
        if not locked:
            try:
                os.kill(pid, 0)
                continue  # that process is alive (and not ours to touch)
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        try:
            stale.unlink()
        except OSError:
            pass


def _check_run_dir_lock(path: Path) -> None:
    """The run dir this process locked is still the one at the path, and so is its lock file
    (lock.py): a run whose lock was lost must not write over the files of whoever came next."""
    lock = held_lock(path.parent.parent)  # (RUN_DIR/checkpoints/latest.pt)
    if lock is None:
        return
    try:
        lock.check_still_held()
    except LockLost as exc:
        raise CheckpointWriteError(f"not saving {path}: {exc}") from exc


def save_atomic(state: dict[str, Any], path: Path) -> float:
    """Write ``state`` to ``path`` atomically; return the seconds it took.

    Raises ``CheckpointWriteError`` (with the OS's reason) when the file cannot be written, or
    when this process's lock on the run dir was lost; the previous file at ``path`` is then
    untouched and no temp file is left behind.
    """
    started = time.perf_counter()
    _check_run_dir_lock(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # a failure here is a bug (an unpicklable value), not the disk's fault
    payload = buffer.getbuffer()
    tmp = _temp_path(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = 0
            while written < len(payload):
                written += os.write(fd, payload[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        _check_run_dir_lock(path)  # (again: writing a large state takes a while)
        os.replace(tmp, path)
    except (OSError, CheckpointWriteError) as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, CheckpointWriteError):
            raise
        raise CheckpointWriteError(f"could not save {path}: {exc.strerror or exc}") from exc
    finally:
        del payload
        buffer.close()
    # Make the rename itself durable. Best effort: the new file is in place either way, and some
    # file systems refuse to fsync a directory.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    _remove_stale_temp_files(path)
    return time.perf_counter() - started


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; every way it can be unusable is a one-line UserError."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}", "pass the run directory of a run that saved one to --resume")
    corrupt = UserError(f"checkpoint {path} is corrupt or truncated", "resume from another run dir, or start a new run")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged_member = archive.testzip()  # reads every record and checks its CRC-32
    except Exception:  # not a zip at all, a cut-off central directory, an unreadable header, ...
        raise corrupt from None
    if damaged_member is not None:
        raise corrupt
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a damaged file
        raise corrupt from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UserError(f"{path} is not a tui-trainer checkpoint", "pass a run dir written by tui-trainer")
    version = state["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path} has an invalid format version ({version!r})", "pass a run dir written by tui-trainer")
    if version > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, newer than this tui-trainer "
                        f"understands ({FORMAT_VERSION})", "upgrade tui-trainer to resume it")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete (no {', '.join(missing)})",
                        "resume from another run dir, or start a new run")
    return state
