"""Signals during a run: SIGINT/SIGTERM/SIGHUP become a clean stop (finish the micro-step,
save, write the `end` record); a third one exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


class SignalStopper:
    """SIGINT/SIGTERM/SIGHUP → ask the engine to finish its micro-step, save and end.

    A second signal while the engine is stopping is ignored (the save is atomic either way);
    a third one exits at once (putting the terminal back first when the app had it). Once a stop
    was signalled the handlers stay in place until the process exits, so a late second Ctrl-C
    cannot raise KeyboardInterrupt during shutdown. ``on_stop`` runs in the handler after each
    stop request (the app uses it to close once the engine is done).
    """

    SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
    # Leave the alternate screen, show the cursor, and switch off mouse reporting, bracketed paste
    # and the kitty keyboard protocol: what a full-screen app turns on.
    TERMINAL_RESET = "\x1b[<u\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1003l\x1b[?1006l\x1b[?1015l\x1b[?2004l\x1b[?1004l"

    def __init__(self, control, on_stop: Callable[[], None] | None = None, restore_terminal: bool = False) -> None:
        self.control = control
        self.on_stop = on_stop
        self.count = 0
        self._previous: dict[int, Any] = {}
        self._terminal: tuple[int, Any] | None = None  # (fd, termios attributes) to put back on a hard exit
        if restore_terminal:
            try:
                import termios

                fd = sys.stdin.fileno()
                self._terminal = (fd, termios.tcgetattr(fd))
            except Exception:  # no termios, no terminal on stdin (termios.error, OSError, ValueError)
                pass

    def __enter__(self) -> "SignalStopper":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.count >= 3:
            self._put_terminal_back()
            os._exit(128 + signum)
        self.control.stop("interrupted", signum)
        if self.on_stop is not None:
            self.on_stop()

    def _put_terminal_back(self) -> None:
        if self._terminal is None:
            return
        fd, attributes = self._terminal
        try:
            import termios

            termios.tcsetattr(fd, termios.TCSANOW, attributes)
            os.write(sys.__stderr__.fileno(), self.TERMINAL_RESET.encode())
        except Exception:  # the terminal may be gone; exiting matters more
            pass

    def __exit__(self, *exc: Any) -> None:
        if self.count:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
