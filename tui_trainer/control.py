"""Thread-safe commands into the engine: set accumulation, pause/resume, save, sample, stop.

The UI thread (or a signal handler) calls these methods; the engine drains them
between micro-steps. A stop requested from a signal handler only assigns an attribute,
which is safe even when the handler interrupts the engine's own thread.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass


@dataclass(frozen=True)
class SetAccum:
    accum: int


@dataclass(frozen=True)
class TogglePause:
    pass


@dataclass(frozen=True)
class SetPaused:
    paused: bool


@dataclass(frozen=True)
class SaveCheckpoint:
    pass


@dataclass(frozen=True)
class SampleNow:
    """Write a text sample from the current weights after the current optimizer step."""


class Control:
    def __init__(self) -> None:
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self.stop_reason: str | None = None  # set once; read by the engine between micro-steps
        self.stop_signal: int | None = None

    # -- called from any thread -------------------------------------------------
    def set_accum(self, accum: int) -> None:
        self._commands.put(SetAccum(int(accum)))

    def toggle_pause(self) -> None:
        self._commands.put(TogglePause())

    def pause(self) -> None:
        self._commands.put(SetPaused(True))

    def resume(self) -> None:
        self._commands.put(SetPaused(False))

    def save(self) -> None:
        self._commands.put(SaveCheckpoint())

    def sample(self) -> None:
        self._commands.put(SampleNow())

    def stop(self, reason: str = "interrupted", signal_number: int | None = None) -> None:
        """Ask the engine to finish the current micro-step, save, and end. Signal-safe."""
        if self.stop_reason is None:
            self.stop_signal = signal_number
            self.stop_reason = reason

    # -- called by the engine ---------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None

    def drain(self, timeout: float | None = None) -> list:
        """All pending commands; with a timeout, wait up to that long for the first one."""
        commands = []
        try:
            if timeout is not None:
                commands.append(self._commands.get(timeout=timeout))
            while True:
                commands.append(self._commands.get_nowait())
        except queue.Empty:
            pass
        return commands
