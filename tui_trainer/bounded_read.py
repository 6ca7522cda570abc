"""Reading a file the user names (a tokenizer, a run's config.json) without trusting it: it must be
a regular file and at most ``MAX_JSON_BYTES`` long, else one ``UserError`` — ``/dev/zero`` or a FIFO
given as a tokenizer must not be read forever (or block) into all the memory there is.

The bound: a byte-level BPE tokenizer.json holds its vocabulary and its merges as text. Measured:
a synthetic one at --vocab-size's maximum, 2**20 tokens of 3.6 characters on average, saved by
tokenizers is 69 MB; real tokens run longer, so ~100 MB — 256 MB leaves room beyond that.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tui_trainer.errors import UserError

MAX_JSON_BYTES = 256 << 20


def _refuse_unless_bounded(info: os.stat_result, path: Path, what: str, hint: str, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {path} is not a regular file", hint)
    if info.st_size > limit:
        raise UserError(f"{what} {path} is {info.st_size:,} bytes: more than the {limit:,} such a file can be", hint)


def check_bounded_file(path: str | Path, what: str, hint: str, limit: int = MAX_JSON_BYTES) -> None:
    """``path`` is a regular file of at most ``limit`` bytes (for files another library reads);
    OSError (FileNotFoundError…) is the caller's to word."""
    _refuse_unless_bounded(os.stat(path), Path(path), what, hint, limit)


def read_bounded_text(path: str | Path, what: str, hint: str, limit: int = MAX_JSON_BYTES) -> str:
    """The UTF-8 text of ``path``, a regular file of at most ``limit`` bytes, read through one open
    file (a file swapped in after the check is not read: the check is of what is read), never
    more than ``limit`` bytes even when it grows meanwhile. Raises UserError for anything else;
    OSError and UnicodeDecodeError are the caller's to word."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # (O_NONBLOCK: a FIFO must not block the open)
    with os.fdopen(fd, "rb") as file:
        _refuse_unless_bounded(os.fstat(fd), path, what, hint, limit)
        data = file.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{what} {path} grew past {limit:,} bytes while it was read", hint)
    return data.decode("utf-8")
