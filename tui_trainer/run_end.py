"""A resumed run whose training is already done: finished and recorded (refused), or finished but
never recorded (a stop during the last epoch's validation or final save, a kill between that save
and the `end` record, an older version's stranded run): resuming records exactly that end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import UserError
from .metrics import METRICS_FILE

FINISHED = ("completed", "early_stop")


def finished_by(state: dict[str, Any], cfg: RunConfig) -> str | None:
    """How the checkpoint's run has ended with these settings: "completed" (past its last epoch),
    "early_stop" (patience used up), or None (there is training left to do)."""
    if state["loop"]["epoch"] > cfg.train.epochs:
        return "completed"
    waited = state["early_stopping"]["epochs_without_improvement"]
    if cfg.train.patience and waited >= cfg.train.patience:
        return "early_stop"
    return None


def last_end_record(run_dir: Path) -> str | None:
    """The reason of the last `end` record in metrics.jsonl, if no step or epoch came after it."""
    path = Path(run_dir) / METRICS_FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(record, dict):
            continue
        if record.get("type") == "end":
            return record.get("reason")
        if record.get("type") in ("step", "epoch"):
            return None
    return None


def refuse_or_finish(state: dict[str, Any], cfg: RunConfig, run_dir: Path) -> str | None:
    """Refuse to resume a run that ended and says so; return the end a resume still owes to one
    that finished without recording it (None: a run with training left)."""
    finished = finished_by(state, cfg)
    if finished is None or last_end_record(run_dir) not in FINISHED:
        return finished
    epoch = state["loop"]["epoch"]
    if finished == "completed":
        raise UserError(f"this run already finished {epoch - 1} epochs", "pass a larger --epochs to train longer")
    waited = state["early_stopping"]["epochs_without_improvement"]
    raise UserError(f"this run stopped early: val loss did not improve for {waited} epochs "
                    f"(patience {cfg.train.patience})",
                    f"pass --patience {waited + 1} or more (0 = off) to train on")


def data_changed(path: str, sha256: str, size: int | None, saved: dict[str, Any]) -> UserError:
    """The data a resume found is not the data the run trained on: what changed, and what can be done
    (never "resume with --data X" naming X itself)."""
    then_path, then_sha = saved.get("data_path"), saved["data_sha256"]
    then_size = saved.get("data_bytes")
    sizes = f"{then_size:,} bytes then, {size:,} now; " if isinstance(then_size, int) and size is not None else ""
    hashes = f"SHA-256 {then_sha[:12]}… then, {sha256[:12]}… now"
    same_file = then_path is None or _same(path, then_path)
    if same_file:
        return UserError(f"the data file {path} has changed since this run trained on it ({sizes}{hashes})",
                         f"put back the contents it had (SHA-256 {then_sha[:12]}…) and resume, or start a new run "
                         f"with another --run-dir")
    return UserError(f"the data file {path} is not the one this run trained on ({then_path}; {sizes}{hashes})",
                     f"drop --data to resume with {then_path}, or start a new run with another --run-dir")


def _same(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return a == b
