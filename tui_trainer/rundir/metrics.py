"""metrics.jsonl: one JSON object per line with a ``type``, flushed as written."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tui_trainer.events import EpochEvent, Event, RunEnded, SampleEvent, SplitChanged, StepEvent
from tui_trainer.rundir.files import METRICS_FILE
from tui_trainer.rundir.reader import read_metrics_file

RECORD_TYPES = {StepEvent: "step", EpochEvent: "epoch", SampleEvent: "sample", RunEnded: "end",
                SplitChanged: "memory"}


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity: write them as strings so every line stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """A sink that appends step, epoch and end records to ``metrics.jsonl``.

    Each line goes to the file at once (one unbuffered append). When the disk is full or the
    mount is gone, the lines wait in memory and go out with the next one that fits, so a full
    disk costs neither the run nor its metrics; ``write_error`` says why while it lasts.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._unwritten = b""
        self.write_error: str | None = None

    def emit(self, event: Event) -> None:
        record_type = RECORD_TYPES.get(type(event))
        if record_type is None or self._fd is None:
            return
        record = {"type": record_type, **{k: _clean(v) for k, v in asdict(event).items()}}
        self._unwritten += (json.dumps(record) + "\n").encode("utf-8")
        self._write_out()

    def _write_out(self) -> None:
        try:
            while self._unwritten:
                written = os.write(self._fd, self._unwritten)
                self._unwritten = self._unwritten[written:]
            self.write_error = None
        except OSError as exc:
            self.write_error = exc.strerror or str(exc)

    def close(self) -> None:
        if self._fd is not None:
            self._write_out()
            os.close(self._fd)
            self._fd = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a finished run's metrics.jsonl as written (tests and scripts that expect a
    sound file: a bad line is a ValueError naming it; a torn last line is left out, as everywhere)."""
    metrics = read_metrics_file(run_dir)
    if metrics.bad:
        raise ValueError(f"{metrics.path}: {metrics.bad_summary()}")
    return [json.loads(line.raw) for line in metrics.lines if line.raw.strip()]


class NoMetrics:
    """The metrics sink of a rank other than 0: rank 0 alone writes the run's records."""

    write_error = None

    def emit(self, event: Any) -> None:
        pass

    def close(self) -> None:
        pass
