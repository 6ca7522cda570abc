"""A run's recorded history: ``metrics.jsonl`` read back as events, so a resumed run's app shows
its earlier steps and epochs from the first frame."""

from __future__ import annotations

import json
from dataclasses import fields as dataclass_fields
from pathlib import Path

from tui_trainer.events import EpochEvent, StepEvent
from tui_trainer.rundir.metrics import METRICS_FILE


def recorded_history(run_dir: str | Path) -> list:
    """The step and epoch events of ``run_dir/metrics.jsonl`` (the engine trims it to the
    checkpoint on resume), rebuilt as events; `end` records of earlier sessions are left out."""
    kinds = {"step": StepEvent, "epoch": EpochEvent}
    floats = {kind: {f.name for f in dataclass_fields(kind) if "float" in str(f.type)} for kind in kinds.values()}
    names = {kind: {f.name for f in dataclass_fields(kind)} for kind in kinds.values()}
    events = []
    try:
        lines = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
            kind = kinds.get(record.get("type"))
            if kind is None:
                continue
            values = {k: (float(v) if k in floats[kind] and isinstance(v, str) else v)  # "nan" / "inf"
                      for k, v in record.items() if k in names[kind]}
            events.append(kind(**values))
        except (ValueError, TypeError):
            continue  # a line cut short by a crash, or written by another version
    return events
