"""Is a folder provably a tui-trainer run dir? Only then is anything in it touched.

Every name a run dir may hold (files.py) counts: a `.lock` or `control.sock` of someone else's
is as much theirs as a `config.json` (a run would truncate the one and rename over the other).
In a folder not provably ours, those two are ours only by content: a lock file that is empty or
describes a holder as ours do, a socket nobody listens on.

`config.json`, `checkpoints/` and `metrics.jsonl` are among the most common names in ML project
folders, and `--run-dir .` is a natural thing to type: a file of one of our names proves nothing.
A run dir is ours when it holds the marker file that only tui-trainer writes (at creation), or —
for run dirs of versions before the marker — a `config.json` whose content parses as ours. Even
then only our own files are removed (never a whole folder), so what a user put beside them stays.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from datetime import datetime, timezone
from pathlib import Path

from tui_trainer import __version__
from tui_trainer.rundir.files import (
    ALL_NAMES,
    CHECKPOINT_DIR,
    CHECKPOINT_KINDS,
    CONFIG_FILE,
    LOCK_FILE,
    MARKER_FILE,
    RUN_FILES,
    SOCKET_FILE,
    TEMP_FILES,
    TENSORBOARD_DIR,
    TENSORBOARD_EVENTS,
    checkpoint_name,
    temp_name,
)
from tui_trainer.rundir.lock import read_holder


def write_marker(run_dir: Path) -> None:
    """Mark ``run_dir`` as a tui-trainer run (atomically: a half-written marker proves nothing)."""
    record = {"tool": "tui-trainer", "version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = run_dir / temp_name(MARKER_FILE)
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / MARKER_FILE)


def _read_json(path: Path, limit: int = 4 * 2**20) -> object:
    """The JSON in ``path``, or None: a missing, unreadable, huge or unparsable file proves nothing."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None


def has_marker(run_dir: Path) -> bool:
    record = _read_json(run_dir / MARKER_FILE)
    return isinstance(record, dict) and record.get("tool") == "tui-trainer"


def config_is_ours(run_dir: Path) -> bool:
    """`config.json` as tui-trainer writes it: the resolved config, the vocabulary and the data hash."""
    record = _read_json(run_dir / CONFIG_FILE)
    if not isinstance(record, dict):
        return False
    config = record.get("config")
    return (isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in ("model", "data", "train"))
            and isinstance(record.get("vocab"), list) and isinstance(record.get("data_sha256"), str))


def is_ours(run_dir: Path) -> bool:
    return has_marker(run_dir) or config_is_ours(run_dir)


def foreign_name(run_dir: Path) -> str | None:
    """The first of our names that ``run_dir`` holds without being provably ours, else None. A
    marker file that is not our marker record (or not a plain file) is the user's, ours or not the
    rest: a run would write its marker over it."""
    if not run_dir.is_dir():
        return None
    marker = run_dir / MARKER_FILE
    if marker.is_symlink() or (marker.exists() and not has_marker(run_dir)):
        return MARKER_FILE
    if is_ours(run_dir):
        return None
    for name in ALL_NAMES:
        target = run_dir / name
        if not (target.exists() or target.is_symlink()):
            continue
        if name == LOCK_FILE and _lock_file_of_ours(target):
            continue
        if name == SOCKET_FILE and _dead_socket(target):
            continue
        return f"{name}/" if target.is_dir() and not target.is_symlink() else name
    return None


def _lock_file_of_ours(path: Path) -> bool:
    """A plain lock file, empty (released) or describing its holder as lock.py writes it."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and (info.st_size == 0 or read_holder(path.parent) is not None)


def _dead_socket(path: Path) -> bool:
    """A Unix socket nobody listens on (a killed run's); a live one, or anything else, is not ours."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return False
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:  # a path too long for a socket address, a timeout: cannot prove it dead
        return False
    finally:
        probe.close()


def remove_our_files(run_dir: Path) -> None:
    """Remove the files a run writes — each by name, never a folder's whole content — so the folder
    can hold a new run. ``checkpoints/`` goes only if nothing else is left in it."""
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for name in map(checkpoint_name, CHECKPOINT_KINDS):
            _unlink_file(checkpoints / name)
            for temp in checkpoints.glob(f"{temp_name(name)}-*"):
                _unlink_file(temp)
        try:
            checkpoints.rmdir()
        except OSError:
            pass  # something of the user's is in it: it stays, and so does the folder
    events = run_dir / TENSORBOARD_DIR  # --tensorboard's event files
    if events.is_dir() and not events.is_symlink():
        for path in events.glob(TENSORBOARD_EVENTS):
            _unlink_file(path)
        try:
            events.rmdir()
        except OSError:
            pass
    for name in (*RUN_FILES, *TEMP_FILES):
        if name != MARKER_FILE:  # the marker goes last: a crash in between leaves the folder still ours
            _unlink_file(run_dir / name)
    _unlink_file(run_dir / MARKER_FILE)


def _unlink_file(path: Path) -> None:
    if path.is_file() or path.is_symlink():  # a folder of one of our names is not ours: left alone
        path.unlink()
