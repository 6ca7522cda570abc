"""Writing to a terminal that may vanish (an SSH link that drops): the headless log and the
one-line messages on stderr keep working, pointed at /dev/null once the terminal is gone."""

from __future__ import annotations

import os
import sys
from typing import Any


class DetachableStream:
    """stdout for the headless log, made to outlive its terminal.

    When the SSH link drops, writes to the dead terminal fail (EIO; EPIPE for a closed pipe);
    the run must still save and write its `end` record. On the first failed write the file
    descriptor is pointed at /dev/null, so later writes and the interpreter's final flush succeed.
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.detached = False

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def write(self, text: str) -> None:
        self._guard(write_replacing, self.stream, text)

    def flush(self) -> None:
        self._guard(self.stream.flush)

    def _guard(self, call, *args: Any) -> None:
        if self.detached:
            return
        try:
            call(*args)
        except (OSError, ValueError):  # (a UnicodeEncodeError never gets here: write_replacing handles it)
            self.detached = True
            point_at_devnull(self.stream)


def write_replacing(stream, text: str) -> None:
    """Write ``text``; what the stream's encoding cannot hold (PYTHONIOENCODING=ascii, a C locale,
    a file name with undecodable bytes) becomes "?" instead of an error that drops the line."""
    try:
        stream.write(text)
    except UnicodeEncodeError:  # a ValueError, but the terminal is fine: the text is not
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "replace").decode(encoding))


def point_at_devnull(stream) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def say(text: str) -> None:
    """One line on stderr, even when the terminal is gone."""
    try:
        write_replacing(sys.stderr, text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        point_at_devnull(sys.stderr)
