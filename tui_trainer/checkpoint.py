"""Checkpoints: atomic save (temp file + fsync + rename), validated load.

A crash at any moment leaves the previous checkpoint readable: the new one is written
to a temporary file in the same directory, flushed and fsynced, then renamed over the
old one (``os.replace`` is atomic on POSIX), and the directory entry is fsynced too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"


class CheckpointWriteError(Exception):
    """Saving failed (disk full, permissions); the previous checkpoint is untouched."""


def checkpoint_path(run_dir: str | Path, kind: str = "latest") -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{kind}.pt"


def save_atomic(state: dict[str, Any], path: Path) -> float:
    """Write ``state`` to ``path`` atomically; return the seconds it took."""
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise CheckpointWriteError(f"could not save {path}: {exc.strerror or exc}") from exc
    return time.perf_counter() - started


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; every way it can be unusable is a one-line UserError."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}", "pass the run directory of a run that saved one to --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__})",
                        "resume from another run dir, or start a new run") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UserError(f"{path} is not a tui-trainer checkpoint", "pass a run dir written by tui-trainer")
    version = state["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {version}, newer than this tui-trainer "
                        f"understands ({FORMAT_VERSION})", "upgrade tui-trainer to resume it")
    return state
