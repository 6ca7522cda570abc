"""How far the epoch's validation pass has got, told to the sinks without flooding them.

A pass over thousands of tiny batches must not emit thousands of events: the first (batch 0)
and the last always go out, the ones between at most every ``VALIDATION_PROGRESS_S``. No host
sync here: the engine only counts batches it has queued (on CPU that is batches done).
"""

from __future__ import annotations

import time
from typing import Callable

from tui_trainer.events import Sink, ValidationProgress

VALIDATION_PROGRESS_S = 0.25  # the app draws at 4 Hz: more often would never be seen


class ValidationProgressEmitter:
    def __init__(self, sink: Sink, epoch: int, batches: int,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.sink, self.epoch, self.batches, self.clock = sink, epoch, batches, clock
        self.started = self._last = clock()
        self.emitted = 0
        self._emit(0, self.started)

    def batch_done(self, batch: int) -> None:
        now = self.clock()
        if batch >= self.batches or now - self._last >= VALIDATION_PROGRESS_S:
            self._emit(batch, now)

    def _emit(self, batch: int, now: float) -> None:
        self._last = now
        self.emitted += 1
        self.sink.emit(ValidationProgress(epoch=self.epoch, batch=batch, batches=self.batches,
                                          seconds=now - self.started))
