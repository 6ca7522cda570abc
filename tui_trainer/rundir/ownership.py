"""Is a folder provably a tui-trainer run dir? Only then is anything in it touched.

`config.json`, `checkpoints/` and `metrics.jsonl` are among the most common names in ML project
folders, and `--run-dir .` is a natural thing to type: a file of one of our names proves nothing.
A run dir is ours when it holds the marker file that only tui-trainer writes (at creation), or —
for run dirs of versions before the marker — a `config.json` whose content parses as ours. Even
then only our own files are removed (never a whole folder), so what a user put beside them stays.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from tui_trainer import __version__

MARKER_FILE = ".tui-trainer-run"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
# The names a run writes at the top of its folder (tokenizer.json: runs with a learned tokenizer).
OUR_FILES = (CONFIG_FILE, METRICS_FILE, "error.log", "tokenizer.json", MARKER_FILE)
OUR_TEMP_FILES = (f".{CONFIG_FILE}.tmp", f".{METRICS_FILE}.tmp", f".{MARKER_FILE}.tmp")
OUR_CHECKPOINTS = ("latest.pt", "best.pt")
# What a refusal names, in the order a user would look for them.
OUR_NAMES = (CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE, "error.log", "tokenizer.json")


def write_marker(run_dir: Path) -> None:
    """Mark ``run_dir`` as a tui-trainer run (atomically: a half-written marker proves nothing)."""
    record = {"tool": "tui-trainer", "version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = run_dir / f".{MARKER_FILE}.tmp"
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
    """The first of our names that ``run_dir`` holds without being provably ours, else None."""
    if not run_dir.is_dir() or is_ours(run_dir):
        return None
    for name in OUR_NAMES:
        target = run_dir / name
        if target.exists() or target.is_symlink():
            return f"{name}/" if target.is_dir() else name
    return None


def remove_our_files(run_dir: Path) -> None:
    """Remove the files a run writes — each by name, never a folder's whole content — so the folder
    can hold a new run. ``checkpoints/`` goes only if nothing else is left in it."""
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        for name in OUR_CHECKPOINTS:
            _unlink_file(checkpoints / name)
            for temp in checkpoints.glob(f".{name}.tmp-*"):
                _unlink_file(temp)
        try:
            checkpoints.rmdir()
        except OSError:
            pass  # something of the user's is in it: it stays, and so does the folder
    events = run_dir / "tensorboard"  # --tensorboard's event files (tensorboard_sink.TENSORBOARD_DIR)
    if events.is_dir() and not events.is_symlink():
        for path in events.glob("events.out.tfevents.*"):
            _unlink_file(path)
        try:
            events.rmdir()
        except OSError:
            pass
    for name in (*OUR_FILES, *OUR_TEMP_FILES):
        if name != MARKER_FILE:  # the marker goes last: a crash in between leaves the folder still ours
            _unlink_file(run_dir / name)
    _unlink_file(run_dir / MARKER_FILE)


def _unlink_file(path: Path) -> None:
    if path.is_file() or path.is_symlink():  # a folder of one of our names is not ours: left alone
        path.unlink()
