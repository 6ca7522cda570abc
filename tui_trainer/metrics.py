"""metrics.jsonl: one JSON object per line with a ``type``, flushed as written."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .events import EpochEvent, Event, RunEnded, StepEvent

METRICS_FILE = "metrics.jsonl"

RECORD_TYPES = {StepEvent: "step", EpochEvent: "epoch", RunEnded: "end"}


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity: write them as strings so every line stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """A sink that appends step, epoch and end records to ``metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._file = open(self.path, "a", encoding="utf-8")

    def emit(self, event: Event) -> None:
        record_type = RECORD_TYPES.get(type(event))
        if record_type is None or self._file.closed:
            return
        record = {"type": record_type, **{k: _clean(v) for k, v in asdict(event).items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
