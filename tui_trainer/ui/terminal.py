"""Surviving a terminal that goes away (SSH drop, tmux session killed).

When the terminal hangs up, the kernel sends the app SIGHUP and SIGCONT. cli's SignalStopper
turns SIGHUP into a clean stop, but Textual's Linux driver answers SIGCONT (meant for coming
back from ctrl+z) by restarting application mode on the dead terminal, with a second writer
thread; seen in tmux: the process then hung forever on a full write queue, or vanished before
the engine had written its `end` record. ``sturdy(LinuxDriver)`` ignores SIGCONT once a stop
signal has arrived, and writes through an output that turns EIO/EPIPE into silence, so the
app winds down, the engine saves, and the process exits with 128 + the signal.
"""

from __future__ import annotations

from typing import IO


class TerminalOutput:
    """A text stream that stops writing, quietly, once its terminal is gone."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):  # EIO / EPIPE / closed: the terminal is gone
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.gone = True

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def sturdy(driver_class: type) -> type:
    """The Linux driver with a ``TerminalOutput``; any other driver (Windows, web) unchanged."""
    try:
        from textual.drivers.linux_driver import LinuxDriver
    except ImportError:  # no termios: not a POSIX terminal
        return driver_class
    if driver_class is not LinuxDriver:
        return driver_class

    class SturdyLinuxDriver(LinuxDriver):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._file = TerminalOutput(self._file)

        def _sigcont_application(self, *args) -> None:
            # A hang-up sends SIGHUP *and* SIGCONT. Textual's SIGCONT handler (meant for
            # resuming after ctrl+z) would restart application mode on the dead terminal:
            # a second writer thread, and a process that hangs or vanishes before the engine
            # has saved. Once a stop signal has arrived there is nothing to resume.
            control = getattr(self._app, "control", None)
            if control is not None and control.stop_signal is not None:
                return
            super()._sigcont_application(*args)

    return SturdyLinuxDriver
