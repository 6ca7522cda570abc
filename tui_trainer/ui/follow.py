"""Following a run dir from outside: ``metrics.jsonl`` tailed and turned back into the engine's
events, so ``tui-trainer view`` feeds the same app the engine would. No Textual here.

Reading never takes the run's lock and never writes into the run dir. Whether the run still
lives is the lock file's word (``run_lock.live_holder``: its pid, checked on this host).

How the file is read: complete lines only. A line cut short at the end of the file is waited
for while the run lives and skipped silently once it is over (a crash's torn last line); a
complete line that is not a JSON record is real corruption, named by its line number. An
`end` record is held back until it is the last word: a resumed run writes steps after the
`end` of its earlier session.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from tui_trainer.config import RunConfig
from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, RunEnded, RunStarted, SampleEvent, StepEvent
from tui_trainer.rundir.lifecycle import CONFIG_FILE, LOCK_FILE
from tui_trainer.rundir.lock import Holder, live_holder
from tui_trainer.rundir.metrics import METRICS_FILE

RECORD_EVENTS = {"step": StepEvent, "epoch": EpochEvent, "sample": SampleEvent, "end": RunEnded}


def _float_fields(kind: type) -> set[str]:
    return {f.name for f in dataclass_fields(kind) if "float" in str(f.type)}


FLOAT_FIELDS = {kind: _float_fields(kind) for kind in RECORD_EVENTS.values()}
NAMES = {kind: {f.name for f in dataclass_fields(kind)} for kind in RECORD_EVENTS.values()}


def event_from_record(record: dict[str, Any]) -> Any | None:
    """The event a metrics record was written from (None for a record type this version does not know)."""
    kind = RECORD_EVENTS.get(record.get("type"))
    if kind is None:
        return None
    values = {k: (float(v) if k in FLOAT_FIELDS[kind] and isinstance(v, str) else v)  # "nan" / "inf"
              for k, v in record.items() if k in NAMES[kind]}
    return kind(**values)


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` if it is a run dir (it has the config.json every run writes before its first step)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"{run_dir} is not a directory", "pass a run dir such as runs/20260101-120000")
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run dir (it has no {CONFIG_FILE})",
                        "pass the --run-dir of a run, such as runs/20260101-120000")
    return path


class MetricsFollower:
    """Reads a run dir's metrics as they grow; ``poll()`` returns the events new since the last
    call (the first call starts with a ``RunStarted`` built from config.json) and, once the run
    is over, its ``RunEnded`` — after which ``ended`` is True and polls return nothing."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = check_run_dir(run_dir)
        self.path = self.run_dir / METRICS_FILE
        record = json.loads((self.run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        self.cfg = RunConfig.from_dict(record["config"])
        self.device = str(record.get("device", "?"))
        self.threads = int(record.get("threads", 0))
        world = record.get("world_size", 1)  # several processes (torchrun); older runs: one
        self.processes = world if isinstance(world, int) and not isinstance(world, bool) and world >= 1 else 1
        self.vocab_size = len(record.get("vocab", ())) or self.cfg.model.vocab_size
        self._offset = 0
        self._partial = b""
        self._line_number = 0  # complete lines read so far
        self._pending_end: RunEnded | None = None
        self._last_step: StepEvent | None = None
        self._started = False
        self.ended = False
        self.holder: Holder | None = None  # the live training process, as of the last poll

    def poll(self) -> list:
        if self.ended:
            return []
        # Liveness first, then the read: a run that was already over wrote its last line before.
        self.holder = live_holder(self.run_dir / LOCK_FILE)
        events = self._read_new()
        if not self._started:
            events.insert(0, self._run_started(events))
            self._started = True
        if self.holder is None:
            events.append(self._pending_end or self._vanished(events))
            self.ended = True
        return events

    def _read_new(self) -> list:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []  # a run still setting up
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        events = []
        for line in lines:
            self._line_number += 1
            if not line.strip():
                continue
            try:
                event = event_from_record(json.loads(line))
            except (ValueError, TypeError):
                raise UserError(f"{self.path} is corrupt at line {self._line_number}: not a metrics record",
                                "the run's checkpoints are unaffected; move the file aside to view the run") from None
            if isinstance(event, RunEnded):
                self._pending_end = event
            elif event is not None:
                if isinstance(event, StepEvent):
                    self._last_step = event
                self._pending_end = None  # steps after an `end`: that session was resumed
                events.append(event)
        return events

    def _vanished(self, events: list) -> RunEnded:
        """No process trains here and the last session wrote no `end`: it was killed (or crashed hard)."""
        step = self._last_step
        return RunEnded(reason="interrupted", epochs=0, steps=step.step if step else 0,
                        tokens_seen=step.tokens_seen if step else 0, best_val_loss=None, best_epoch=None,
                        message="no process is training in this run dir and its last session wrote no end "
                                f"(killed?); continue it with tui-trainer train --resume {self.run_dir}")

    def _run_started(self, events: list) -> RunStarted:
        """What the engine's RunStarted would have said, from config.json and the records so far."""
        from tui_trainer.engine.memory import parameter_count

        cfg, block = self.cfg, self.cfg.model.block_size
        steps = [e for e in events if isinstance(e, StepEvent)]
        epochs = [e for e in events if isinstance(e, EpochEvent)]
        if epochs:  # exact: the first epoch's tokens
            examples = epochs[0].tokens_seen // block
        elif steps:  # at most this many (an epoch's last window can be short)
            examples = steps[0].steps_in_epoch * steps[0].micro_batch * steps[0].accum * self.processes
        else:
            examples = (cfg.data.limit_train_batches or 0) * cfg.train.micro_batch
        try:
            parameters = parameter_count(cfg.model)
        except (TypeError, ValueError):  # an older config without every field: the panel shows "—"
            parameters = 0
        seconds = sum(e.seconds for e in epochs if math.isfinite(e.seconds))
        return RunStarted(run_dir=str(self.run_dir), device=self.device, threads=self.threads, parameters=parameters,
                          vocab_size=self.vocab_size, train_examples=examples, val_examples=0,
                          epochs=cfg.train.epochs, micro_batch=cfg.train.micro_batch, accum=cfg.train.accum,
                          processes=self.processes, block_size=block, planned_tokens=cfg.train.epochs * examples * block,
                          elapsed_before=seconds)
