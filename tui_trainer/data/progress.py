"""A progress line while the data is prepared (fingerprint, check, learning a BPE, tokenizing).

On a terminal the line is rewritten in place; in a log (CI, a pipe) only the phases that took
a while leave a line, once done. A small corpus from the cache prints nothing at all.
"""

from __future__ import annotations

import time
from typing import TextIO

from tui_trainer.data.text_source import Progress

SLOW_PHASE_S = 1.0  # a phase that took longer than this leaves a line in a log
REDRAW_S = 0.2


class DataProgressLine:
    def __init__(self, out: TextIO, live: bool | None = None) -> None:
        self.out = out
        try:
            self.live = out.isatty() if live is None else live
        except (OSError, ValueError):
            self.live = False
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, progress: Progress) -> None:
        done = progress.done_bytes >= progress.total_bytes
        text = (f"data: {progress.phase} {min(progress.fraction, 1.0):4.0%} of {progress.total_bytes / 1e6:,.1f} MB "
                f"({progress.mb_per_s:,.1f} MB/s, {progress.seconds:.1f} s)")
        try:
            if self.live and (self._drawn or progress.seconds >= REDRAW_S):
                now = time.monotonic()
                if done or now - self._last_draw >= REDRAW_S:
                    self._last_draw = now
                    self.out.write("\r\x1b[2K" + text)
                    self._drawn = True
            if done and progress.seconds >= SLOW_PHASE_S:
                self.out.write(("\r\x1b[2K" if self.live else "") + text + "\n")
                self._drawn = False
            elif done and self._drawn:
                self.out.write("\r\x1b[2K")
                self._drawn = False
            self.out.flush()
        except (OSError, ValueError):
            pass  # a vanished terminal must not stop the preparation
