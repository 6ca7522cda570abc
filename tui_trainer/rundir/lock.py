"""One writer per run dir: an exclusive ``flock`` on a lock file in the run dir, held by the
training process from before it writes anything there until its run ends.

The kernel releases a ``flock`` when the process dies, ``kill -9`` included, so a lock is never
stale; the pid, host and start time written into the file after locking only *describe* the
holder (for the refusal message and for viewers). Viewers never take the lock: they read the
file and ask whether its pid still lives (``live_holder``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tui_trainer.errors import UserError


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str  # local time, ISO format, to the second

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


def read_holder(lock_path: Path) -> Holder | None:
    """What the lock file says about its holder (None: empty, unreadable or not ours)."""
    try:
        record = json.loads(lock_path.read_text(encoding="utf-8"))
        return Holder(pid=int(record["pid"]), host=str(record["host"]), started=str(record["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_holder(lock_path: Path) -> Holder | None:
    """The holder, if its process still runs (checked by pid on this host; another host's holder
    is taken at its word). Reads only: never locks, never writes."""
    holder = read_holder(lock_path)
    if holder is None:
        return None
    if holder.host == socket.gethostname():
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return None  # died without releasing (kill -9): the kernel has dropped its lock
        except PermissionError:
            pass  # alive, someone else's
    return holder


def _in_use(lock_path: Path, run_dir: Path) -> UserError:
    holder = read_holder(lock_path)
    who = holder.describe() if holder else "another process"
    return UserError(f"run dir {run_dir} is in use by a training process ({who})",
                     f"watch or steer it with `tui-trainer view {run_dir}`; a new run can go in another --run-dir")


def refuse_if_in_use(lock_path: Path, run_dir: Path) -> None:
    """Refuse early (before the resume checkpoint is read, before anything is written) when a live
    process holds the lock. Creates nothing: a dir with no lock file has no live writer."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(lock_path, run_dir) from None
    finally:
        os.close(fd)  # (closing drops the probe's lock, if it got one)


class RunLock:
    """The exclusive lock on one run dir; ``release()`` (or the process's end) lets it go."""

    def __init__(self, lock_path: Path, run_dir: Path) -> None:
        self.path = lock_path
        self._fd: int | None = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise _in_use(lock_path, run_dir) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Empty the file (nobody holds it now), then unlock. Safe to call twice."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a full or vanished disk: the unlock below is what counts
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __del__(self) -> None:  # a Trainer built but never run (tests, a refused --resume in the app)
        try:
            self.release()
        except Exception:  # at interpreter shutdown `os` may already be gone; the kernel unlocks anyway
            pass
