"""A run's recorded history: ``metrics.jsonl`` read back as events (by rundir/reader.py, the one
reader), so a resumed run's app shows its earlier steps and epochs from the first frame."""

from __future__ import annotations

from pathlib import Path

from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, StepEvent
from tui_trainer.rundir.reader import read_metrics_file


def recorded_history(run_dir: str | Path) -> list:
    """The step and epoch events of ``run_dir/metrics.jsonl`` (the engine trims it to the
    checkpoint on resume, and sets aside the lines that are not records: its notes name them);
    `end` records of earlier sessions are left out."""
    try:
        metrics = read_metrics_file(run_dir)
    except UserError:
        return []  # unreadable: the run itself says so when it opens the file to append
    return [event for event in metrics.events if isinstance(event, (StepEvent, EpochEvent))]
