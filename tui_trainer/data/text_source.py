"""The corpus as a stream of bytes: one UTF-8 file, or every ``*.txt`` under a directory.

A directory's files are read in sorted path order and joined with a newline. The stream is
read in chunks, so memory stays bounded whatever the corpus size, and a chunk always ends on
a character boundary (a multi-byte character is never split between two chunks). A UTF-8
byte-order mark at the start of a file is not text and is dropped.
"""

from __future__ import annotations

import codecs
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tui_trainer.errors import UserError

CHUNK_BYTES = 4 << 20  # 4 MiB per read: big enough for numpy to pay off, small enough to stay flat
BOM = codecs.BOM_UTF8
SEPARATOR = b"\n"  # between the files of a directory


@dataclass(frozen=True)
class Progress:
    """How far the preparation of the data is (for a progress line or bar)."""

    phase: str  # "fingerprint", "checking", "vocabulary", "training tokenizer", "tokenizing", "verifying cache"
    done_bytes: int
    total_bytes: int
    seconds: float  # since this phase started

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0

    @property
    def mb_per_s(self) -> float:
        return self.done_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class PreparationCancelled(Exception):
    """A stop (Ctrl-C) came while the data was being prepared; nothing half-made was kept."""


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


class Meter:
    """Reports a phase's progress (at most ~10 times a second) and checks for a stop."""

    def __init__(self, phase: str, total: int, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
        self.phase, self.total, self.progress, self.cancel = phase, total, progress, cancel
        self.done = 0
        self.started = self._last = time.perf_counter()
        self._report(force=True)

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        if self.cancel is not None and self.cancel():
            raise PreparationCancelled
        self._report()

    def finish(self) -> None:
        self.done = self.total
        self._report(force=True)

    def _report(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.progress is not None and (force or now - self._last >= 0.1):
            self._last = now
            self.progress(Progress(self.phase, self.done, self.total, now - self.started))


@dataclass(frozen=True)
class TextSource:
    """What ``--data`` names: the files, in reading order, and their joined size."""

    path: Path  # as the user gave it, resolved
    files: tuple[Path, ...]
    total_bytes: int  # every file's bytes plus the separators

    @property
    def is_directory(self) -> bool:
        return self.path.is_dir()


def find_source(path: Path) -> TextSource:
    """The file, or every ``*.txt`` under the directory (sorted), or a UserError saying what is wrong."""
    if not path.exists():
        raise UserError(f"data path {path} does not exist", "check the path given to --data")
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*.txt") if p.is_file()))
        if not files:
            raise UserError(f"data directory {path} holds no .txt files",
                            "put UTF-8 text files named *.txt in it (subdirectories count), or pass a file")
    elif path.is_file():
        files = (path,)
    else:
        raise UserError(f"data path {path} is not a file or a directory", "pass a UTF-8 text file or a directory")
    total = 0
    for file in files:
        try:
            with open(file, "rb"):
                pass
            total += file.stat().st_size
        except OSError as exc:
            raise UserError(f"cannot read data file {file} ({exc.strerror or exc})",
                            "check its permissions, or remove it from the data directory") from None
    total += len(SEPARATOR) * (len(files) - 1)
    return TextSource(path.resolve(), files, total)


def _read_blocks(file: Path, chunk_bytes: int) -> Iterator[bytes]:
    try:
        with open(file, "rb") as handle:
            while block := handle.read(chunk_bytes):
                yield block
    except OSError as exc:
        raise UserError(f"cannot read data file {file} ({exc.strerror or exc})",
                        "check its permissions, or remove it from the data directory") from None


def fingerprint(source: TextSource, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                chunk_bytes: int = CHUNK_BYTES) -> str:
    """sha256 of the joined stream as it is on disk (of a single file: of its bytes, as runs
    have always recorded it, so older checkpoints still match)."""
    digest = hashlib.sha256()
    meter = Meter("fingerprint", source.total_bytes, progress, cancel)
    for index, file in enumerate(source.files):
        if index:
            digest.update(SEPARATOR)
        for block in _read_blocks(file, chunk_bytes):
            digest.update(block)
            meter.add(len(block))
    meter.finish()
    return digest.hexdigest()


def check_text(source: TextSource, on_chunk: Callable[[bytes], None] | None = None,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None,
               chunk_bytes: int = CHUNK_BYTES) -> None:
    """Refuse what is not UTF-8 text (NUL bytes anywhere, invalid UTF-8), naming the file, and a
    corpus with no text in it; ``on_chunk`` sees the text (BOMs dropped) in pieces of whole
    characters, in the same pass (e.g. to collect the character set)."""
    meter = Meter("checking", source.total_bytes, progress, cancel)
    any_text = False
    where = "data file" if not source.is_directory else "file"
    also = ", or move it out of the data directory" if source.is_directory else ""
    for file in source.files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0  # bytes of this file checked so far
        carry = b""
        for block, skipped in _file_blocks(file, chunk_bytes):
            offset += skipped
            if b"\x00" in block:
                at = offset + block.index(b"\x00")
                raise UserError(f"{where} {file} looks binary (a NUL byte at byte {at})", f"pass UTF-8 text{also}")
            try:
                # ASCII, with no character pending from the block before, is valid as it is.
                if decoder.getstate()[0] or int(np.frombuffer(block, np.uint8).max()) >= 0x80:
                    decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise UserError(f"{where} {file} is not valid UTF-8 (byte {offset + exc.start})",
                                f"convert it with e.g. `iconv -t utf-8`{also}") from None
            any_text = any_text or bool(block.strip())
            offset += len(block)
            meter.add(len(block) + skipped)
            if on_chunk is not None:
                data = carry + block
                cut = complete_prefix(data)
                carry = data[cut:]
                if cut:
                    on_chunk(data[:cut])
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(f"{where} {file} is not valid UTF-8 (it ends inside a character)",
                            f"convert it with e.g. `iconv -t utf-8`{also}") from None
        if on_chunk is not None and len(source.files) > 1:
            on_chunk(SEPARATOR)
    if not any_text:
        empty = all(f.stat().st_size == 0 for f in source.files)
        what = "is empty" if empty else "holds no text (only whitespace)"
        raise UserError(f"data {'directory' if source.is_directory else 'file'} {source.path} {what}",
                        "pass UTF-8 text with some words in it")
    meter.finish()


def _file_blocks(file: Path, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """A file's blocks with a leading BOM dropped: (block, bytes skipped before it)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(len(BOM))
            skipped = len(BOM) if head == BOM else 0
            first = b"" if skipped else head
            block = first + handle.read(max(0, chunk_bytes - len(first)))
            while block:
                yield block, skipped
                skipped = 0
                block = handle.read(chunk_bytes)
    except OSError as exc:
        raise UserError(f"cannot read data file {file} ({exc.strerror or exc})",
                        "check its permissions, or remove it from the data directory") from None


def complete_prefix(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that ends on a UTF-8 character boundary."""
    end = len(data)
    lead = end - 1
    while lead >= 0 and end - lead <= 3 and (data[lead] & 0xC0) == 0x80:
        lead -= 1  # continuation bytes
    if lead < 0:
        return end
    first = data[lead]
    need = 1 if first < 0x80 else 2 if first >> 5 == 0b110 else 3 if first >> 4 == 0b1110 else 4 if first >> 3 == 0b11110 else 1
    return end if end - lead >= need else lead


def text_chunks(source: TextSource, chunk_bytes: int = CHUNK_BYTES, split_at: int | None = None,
                meter: Meter | None = None) -> Iterator[bytes]:
    """The joined stream (BOMs dropped) in chunks of about ``chunk_bytes`` that end on character
    boundaries. With ``split_at`` (a byte offset in this stream), one chunk ends exactly at the
    first character boundary at or after it, and an empty chunk marks that point."""
    carry = b""
    position = 0  # stream bytes yielded so far
    split_pending = split_at is not None

    def emit(data: bytes) -> Iterator[bytes]:
        nonlocal position, split_pending
        if split_pending and position + len(data) >= split_at:
            cut = max(0, split_at - position)
            while cut < len(data) and (data[cut] & 0xC0) == 0x80:
                cut += 1  # forward to the next character boundary
            if cut:
                yield data[:cut]
            yield b""
            split_pending = False
            position += cut
            data = data[cut:]
        if data:
            position += len(data)
            yield data

    for index, file in enumerate(source.files):
        if index:
            carry += SEPARATOR
        for block, skipped in _file_blocks(file, chunk_bytes):
            if meter is not None:
                meter.add(len(block) + skipped)
            data = carry + block
            cut = complete_prefix(data)
            carry = data[cut:]
            if cut:
                yield from emit(data[:cut])
    if carry:
        yield from emit(carry)
    if split_pending:
        yield b""


def stream_bytes(source: TextSource) -> int:
    """Bytes of the joined stream once BOMs are dropped."""
    boms = 0
    for file in source.files:
        with open(file, "rb") as handle:
            boms += handle.read(len(BOM)) == BOM
    return source.total_bytes - boms * len(BOM)
