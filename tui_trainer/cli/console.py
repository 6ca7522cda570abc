"""Writing to a terminal that may vanish (an SSH link that drops): the headless log and the
one-line messages on stderr keep working, pointed at /dev/null once the terminal is gone; and to
one whose encoding is not UTF-8: lines fitted to it ("?" and ASCII look-alikes), the app drawn in
UTF-8 all the same."""

from __future__ import annotations

import codecs
import contextlib
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


# Our own punctuation, written as ASCII where the stream cannot hold it ("?" for anything else).
LOOK_ALIKES = str.maketrans({"—": "-", "–": "-", "…": "...", "→": "->", "×": "x", "≈": "~", "≥": ">=",
                             "·": ".", "’": "'", "‘": "'", "“": '"', "”": '"', "²": "^2"})


def fit_to(stream, text: str) -> str:
    """``text`` as the stream's encoding can hold it: unchanged when it can; else our punctuation
    as ASCII look-alikes and anything else (a name's "ü", an undecodable byte's surrogate) as "?".
    Checked here, not left to the stream: stderr's "backslashreplace" would print "\\u2014"."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    handler = "surrogateescape" if getattr(stream, "errors", None) == "surrogateescape" else "strict"
    try:
        text.encode(encoding, handler)
        return text
    except UnicodeEncodeError:
        return text.translate(LOOK_ALIKES).encode(encoding, "replace").decode(encoding)
    except LookupError:  # an encoding Python does not know: it fails on write anyway
        return text


def write_replacing(stream, text: str) -> None:
    """Write ``text``; what the stream's encoding cannot hold (PYTHONIOENCODING=ascii, a C locale,
    a file name with undecodable bytes) becomes "?" (or an ASCII look-alike) instead of an error
    that drops the line, or an escape such as "\\u2014"."""
    stream.write(fit_to(stream, text))


@contextlib.contextmanager
def terminal_in_utf8():
    """While a Textual app draws: its terminal stream (``sys.__stderr__``, where Textual's driver
    writes) in UTF-8. Under an ASCII encoding (PYTHONIOENCODING=ascii, a C locale) Python writes
    the app's box-drawing characters as "\\u256d" escapes (stderr's "backslashreplace"); Textual
    has no ASCII mode, and the terminal a user runs it in takes UTF-8. Put back afterwards, so
    the one-line messages that follow are fitted to the encoding asked for."""
    stream = sys.__stderr__
    encoding, errors = getattr(stream, "encoding", None), getattr(stream, "errors", None)
    try:
        changed = codecs.lookup(encoding or "ascii").name != "utf-8"
        if changed:
            stream.flush()
            stream.reconfigure(encoding="utf-8", errors="replace")
    except (AttributeError, LookupError, OSError, ValueError):  # not a text stream we can change
        changed = False
    try:
        yield
    finally:
        if changed:
            with contextlib.suppress(AttributeError, LookupError, OSError, ValueError):
                stream.flush()
                stream.reconfigure(encoding=encoding, errors=errors)


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
