"""Following a run dir from outside: ``metrics.jsonl`` tailed and turned back into the engine's
events (by rundir/reader.py, the one reader), so ``tui-trainer view`` feeds the same app the
engine would. No Textual here.

Reading never writes into the run dir. Whether the run still lives is the lock's own word
(``lock.live_holder`` tries it), never a pid in a file.

How the file is read: complete lines only. A line cut short at the end of the file is waited
for while the run lives and skipped silently once it is over (a crash's torn last line); a
complete line that is not a metrics record is left out and named by its line number
(``set_aside``: the viewer shows it). An `end` record is held back until it is the last word:
a resumed run writes steps after the `end` of its earlier session.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from tui_trainer.errors import UserError
from tui_trainer.events import EpochEvent, RunEnded, RunStarted, StepEvent
from tui_trainer.rundir.files import METRICS_FILE
from tui_trainer.rundir.lock import Holder, live_holder
from tui_trainer.rundir.reader import Line, check_run_dir, parse_line, read_run_config, split_lines, whole_number


class MetricsFollower:
    """Reads a run dir's metrics as they grow; ``poll()`` returns the events new since the last
    call (the first call starts with a ``RunStarted`` built from config.json) and, once the run
    is over, its ``RunEnded`` — after which ``ended`` is True and polls return nothing."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = check_run_dir(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.cfg, record = read_run_config(self.run_dir)
        device = record.get("device", "?")
        self.device = device if isinstance(device, str) else "?"
        self.threads = whole_number(record, "threads", 0)
        precision = record.get("precision", "")  # (older runs did not record it: no label, as before)
        self.precision = precision if isinstance(precision, str) else ""
        self.processes = whole_number(record, "world_size", 1, least=1)  # several processes (torchrun); older: one
        vocab = record.get("vocab")
        self.vocab_size = (len(vocab) if isinstance(vocab, list) else 0) or self.cfg.model.vocab_size
        self._offset = 0
        self._partial = b""
        self._line_number = 0  # complete lines read so far
        self.set_aside: list[Line] = []  # complete lines that are not metrics records, left out
        self._told = 0  # of those, how many new_set_aside() has named
        self._pending_end: RunEnded | None = None
        self._last_step: StepEvent | None = None
        self._started = False
        self.ended = False
        self.holder: Holder | None = None  # the live training process, as of the last poll

    def poll(self) -> list:
        if self.ended:
            return []
        # Liveness first, then the read: a run that was already over wrote its last line before.
        self.holder = live_holder(self.run_dir)
        events = self._read_new(final=self.holder is None)
        if not self._started:
            events.insert(0, self._run_started(events, live=self.holder is not None))
            self._started = True
        if self.holder is None:
            events.append(self._pending_end or self._vanished(events))
            self.ended = True
        return events

    def _read_new(self, final: bool = False) -> list:
        """The events of the lines complete since the last read (``final``: the run is over, and a
        last line without its newline counts if it is a whole record; a torn one is dropped)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []  # a run still setting up
        except OSError as exc:
            raise UserError(f"{self.path} cannot be read: {exc.strerror or exc}", "check its permissions") from None
        self._offset += len(data)
        lines, self._partial = split_lines(self._partial + data)
        if final and self._partial.strip() and parse_line(self._partial, self._line_number + 1).problem is None:
            lines, self._partial = [*lines, self._partial], b""
        events = []
        for raw in lines:
            self._line_number += 1
            line = parse_line(raw, self._line_number)
            event = line.event
            if line.problem is not None:
                self.set_aside.append(line)
            elif isinstance(event, RunEnded):
                self._pending_end = event
            elif event is not None:
                if isinstance(event, StepEvent):
                    self._last_step = event
                self._pending_end = None  # steps after an `end`: that session was resumed
                events.append(event)
        return events

    def new_set_aside(self) -> str:
        """The lines left out since the last call, named ("" for none), for the viewer to show."""
        named = ", ".join(line.describe() for line in self.set_aside[self._told:])
        self._told = len(self.set_aside)
        return f"{self.path}: {named} left out (not metrics records)" if named else ""

    def _vanished(self, events: list) -> RunEnded:
        """No process trains here and the last session wrote no `end`: it was killed (or crashed hard)."""
        step = self._last_step
        return RunEnded(reason="interrupted", epochs=0, steps=step.step if step else 0,
                        tokens_seen=step.tokens_seen if step else 0, best_val_loss=None, best_epoch=None,
                        elapsed_seconds=step.elapsed if step else None,  # (its clock at its last step)
                        message="no process is training in this run dir and its last session wrote no end "
                                f"(killed?); continue it with tui-trainer train --resume {self.run_dir}")

    def _elapsed(self, events: list, live: bool) -> float:
        """The run's clock now, for the viewer to tick on from (the app's: wall time since the run
        started, earlier sessions and pauses included): its latest step's ``elapsed`` plus the time
        since that step (a run over: no more); where the last word is an `end` (a run over, or one
        resumed that has taken no step yet), that end's; older records without either, the epochs' sum."""
        end, step = self._pending_end, self._last_step
        if end is not None and end.elapsed_seconds is not None and math.isfinite(end.elapsed_seconds):
            return end.elapsed_seconds
        if step is not None and step.elapsed is not None and math.isfinite(step.elapsed):
            since = time.time() - step.unix_time if live and step.unix_time is not None else 0.0
            return step.elapsed + (since if math.isfinite(since) and since > 0 else 0.0)
        return sum(e.seconds for e in events if isinstance(e, EpochEvent) and not e.before_training
                   and math.isfinite(e.seconds))

    def _run_started(self, events: list, live: bool = True) -> RunStarted:
        """What the engine's RunStarted would have said, from config.json and the records so far."""
        from tui_trainer.engine.memory import parameter_count

        cfg, block = self.cfg, self.cfg.model.block_size
        steps = [e for e in events if isinstance(e, StepEvent)]
        epochs = [e for e in events if isinstance(e, EpochEvent) and not e.before_training]
        if epochs:  # exact: the first epoch's tokens
            examples = epochs[0].tokens_seen // block
        elif steps:  # at most this many (an epoch's last window can be short) ...
            window = steps[0].micro_batch * steps[0].accum * self.processes
            examples = steps[0].steps_in_epoch * window
            # ... and exactly --limit-train-batches' cap where the cap fits these steps: the engine's
            # examples_per_epoch, so the viewer plans the app's tokens (--quick: 922K, not 934K)
            capped = (cfg.data.limit_train_batches or 0) * cfg.train.micro_batch
            if examples - window < capped <= examples:
                examples = capped
        else:
            examples = (cfg.data.limit_train_batches or 0) * cfg.train.micro_batch
        try:
            parameters = parameter_count(cfg.model)
        except (TypeError, ValueError):  # an older config without every field: the panel shows "—"
            parameters = 0
        return RunStarted(run_dir=str(self.run_dir), device=self.device, threads=self.threads, parameters=parameters,
                          vocab_size=self.vocab_size, train_examples=examples, val_examples=0,
                          epochs=cfg.train.epochs, micro_batch=cfg.train.micro_batch, accum=cfg.train.accum,
                          processes=self.processes, block_size=block, planned_tokens=cfg.train.epochs * examples * block,
                          elapsed_before=self._elapsed(events, live), noise_scale=bool(cfg.train.noise_scale),
                          precision=self.precision)
