"""One writer per run dir: an exclusive ``flock`` held by the training process from before it
writes anything there until its run ends. This is where a run dir gets locked (``RunLock``).

Two locks, because a lock held by a path is defeated by deleting the path: the run dir itself
(its directory inode, which ``rm RUN_DIR/.lock`` cannot take away) and ``RUN_DIR/.lock`` (the
lock older versions take, and the file that describes the holder: pid, host, start time).
Where a file system cannot lock a directory (some network mounts) the file's lock alone is held,
and ``check_still_held`` — called before each checkpoint save (checkpoints.save_atomic) — finds
a lock file deleted or replaced under the run, which then stops saving rather than write over
another run's files.

The kernel releases a ``flock`` when the process dies, ``kill -9`` included, so a lock is never
stale. Whether a run is live is the lock's own word: viewers try the lock (``live_holder``) and
let it go at once; a pid in a file proves nothing (pids are reused).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tui_trainer.errors import UserError
from tui_trainer.rundir.files import LOCK_FILE

# The run dirs this process holds, by absolute path (not by inode: a folder replaced at the path must
# still find the lock that was lost); weak: a lock nobody keeps is released by __del__.
_HELD: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()
_CANNOT_LOCK = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


class LockLost(Exception):
    """The run dir or its lock file at the path is no longer the one this process locked."""


@dataclass(frozen=True)
class Holder:
    pid: int  # 0: the lock is held but its file does not say by whom (deleted, emptied)
    host: str
    started: str  # local time, ISO format, to the second

    def describe(self) -> str:
        if not self.pid:
            return "another process (its lock file does not say which: deleted or emptied while it trains)"
        return f"pid {self.pid} on {self.host}, started {self.started}"


def read_holder(run_dir: Path) -> Holder | None:
    """What the lock file says about its holder (None: absent, empty, unreadable or not ours)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # (a FIFO never blocks)
        with os.fdopen(fd, "rb") as handle:
            record = json.loads(handle.read(4096).decode("utf-8"))
        return Holder(pid=int(record["pid"]), host=str(record["host"]), started=str(record["started"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _try_lock(path: Path, flags: int) -> bool | None:
    """Is ``path`` flock'd by someone? Tries the lock and lets it go at once. None: no such path,
    or a file system that cannot say."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # (closing drops the probe's lock, if it got one)


def lock_is_held(run_dir: Path) -> bool:
    """A live process holds the run dir's lock (its directory's, or its lock file's)."""
    run_dir = Path(run_dir)
    return bool(_try_lock(run_dir, os.O_RDONLY | os.O_DIRECTORY)
                or _try_lock(run_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))


def live_holder(run_dir: Path) -> Holder | None:
    """The process training in ``run_dir``, if one does (judged by trying its lock). Never writes."""
    if not lock_is_held(run_dir):
        return None
    return read_holder(run_dir) or Holder(pid=0, host="", started="")


def _in_use(run_dir: Path) -> UserError:
    holder = read_holder(run_dir) or Holder(pid=0, host="", started="")
    return UserError(f"run dir {run_dir} is in use by a training process ({holder.describe()})",
                     f"watch or steer it with `tui-trainer view {run_dir}`; a new run can go in another --run-dir")


def refuse_if_in_use(run_dir: Path) -> None:
    """Refuse early (before the resume checkpoint is read, before anything is written) when a live
    process holds the lock. Creates nothing."""
    if Path(run_dir).is_dir() and lock_is_held(run_dir):
        raise _in_use(Path(run_dir))


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def held_lock(run_dir: Path) -> RunLock | None:
    """The lock this process holds on ``run_dir``, if any."""
    return _HELD.get(os.path.abspath(run_dir))


class RunLock:
    """The exclusive lock on one run dir; ``release()`` (or the process's end) lets it go."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._dir_fd: int | None = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        self._dir = _identity(os.fstat(self._dir_fd))
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._close()
            raise _in_use(self.run_dir) from None
        except OSError as exc:
            if exc.errno not in _CANNOT_LOCK:
                self._close()
                raise
            os.close(self._dir_fd)  # a directory this file system cannot lock: the file's lock alone
            self._dir_fd = None
        try:
            self._lock_file()
        except BaseException:
            self._close()
            raise
        _HELD[os.path.abspath(self.run_dir)] = self

    def _lock_file(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            reason = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened: {exc.strerror or exc}"
            raise UserError(f"cannot lock run dir {self.run_dir}: its {LOCK_FILE} {reason}",
                            "remove it if no run is training there (it must be a plain file)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The file at the path must be the one just locked: a file deleted or swapped between the
            # open and the lock would leave this process holding a lock nobody else can see.
            if _identity(os.fstat(fd)) != _identity(os.stat(self.path, follow_symlinks=False)):
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            raise _in_use(self.run_dir) from None
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check_still_held(self) -> None:
        """Before writing into the run dir: the folder at its path is still the one locked, and so
        is its lock file. A lock file deleted under a run whose folder lock holds (nobody else can
        have got in) is taken again; otherwise ``LockLost``."""
        if self._fd is None:
            raise LockLost(f"the lock on {self.run_dir} was released")
        try:
            at_path = _identity(os.stat(self.run_dir))
        except OSError:
            at_path = None
        if at_path != self._dir:
            raise LockLost(f"run dir {self.run_dir} was moved, deleted or replaced while this run trained in it")
        try:
            same_file = _identity(os.stat(self.path, follow_symlinks=False)) == _identity(os.fstat(self._fd))
        except FileNotFoundError:
            same_file = False
        if same_file:
            return
        if self._dir_fd is None:
            raise LockLost(f"its lock file {self.path} was deleted or replaced: another process may be writing "
                           f"in {self.run_dir}")
        old, self._fd = self._fd, None
        os.close(old)
        try:
            self._lock_file()  # the folder's lock is ours: the lock file is only its description
        except UserError as exc:
            raise LockLost(exc.message) from None

    def where_now(self) -> Path | None:
        """Where the locked folder is now (it may have been moved away): None when it was deleted,
        or this system cannot say (Linux names an open folder's path in /proc)."""
        if self._dir_fd is None:
            return None
        try:
            target = os.readlink(f"/proc/self/fd/{self._dir_fd}")
            found = _identity(os.stat(target)) if os.path.isabs(target) else None
        except OSError:
            return None
        return Path(target) if found == self._dir else None

    def release(self) -> None:
        """Empty the file (nobody holds it now), then unlock. Safe to call twice."""
        key = os.path.abspath(self.run_dir)
        if _HELD.get(key) is self:
            del _HELD[key]
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # (the file this process locked, even if the path names another now)
            except OSError:
                pass  # a full or vanished disk: the unlock below is what counts
        self._close()

    def _close(self) -> None:
        for name in ("_fd", "_dir_fd"):
            fd = getattr(self, name, None)
            setattr(self, name, None)
            if fd is not None:
                os.close(fd)  # closing the last descriptor releases the flock

    def __del__(self) -> None:  # a Trainer built but never run (tests, a refused --resume in the app)
        try:
            self.release()
        except Exception:  # at interpreter shutdown `os` may already be gone; the kernel unlocks anyway
            pass
