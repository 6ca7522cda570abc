"""The token cache's file: its layout, its checksum, the temp files that become it, and reading
its ids with plain reads (never a memory map).

Layout (all integers little-endian)::

    MAGIC (8 bytes) | header room R (u64) | CRC-32 (u32) | JSON header, padded with spaces to R | ids

The CRC-32 covers the ids and then every header byte but its own four (the magic, the room, the
JSON and its padding): a flipped byte anywhere in the file (a character of the vocabulary, a
digit of ``n_train``) is a damaged cache, rebuilt, never trusted.

The ids are read with ``os.pread`` on a descriptor kept open from the check: a cache cut short
under a running run gives a short read, raised as ``DataChanged`` (the run saves and ends with
one line), where a memory map would have killed the process with SIGBUS. A cache replaced by
another process does not matter: the descriptor still reads the file that was checked.

Temp files are ours by name *and* content: ``.tui-trainer-tmp-<pid>-<random>``, made with
O_EXCL (never someone else's file opened for writing), starting with ``MAGIC`` (a cache) or
``{"tui_trainer": `` (a JSON record). Only such files of dead processes are ever cleaned up.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tui_trainer.data import text_source as ts
from tui_trainer.errors import DataChanged

MAGIC = b"TUITOK2\n"
FORMAT = 2
FIXED = len(MAGIC) + 8 + 4  # magic, room, CRC-32
MAX_HEADER = 64 << 20  # a char vocabulary of every Unicode character, JSON-escaped, is ~13 MB
ID_TYPES = ("uint8", "uint16", "uint32")
TEMP_PREFIX = ".tui-trainer-tmp-"
JSON_MARK = b'{"tui_trainer": '  # how our JSON records (and so their temp files) begin
MAX_SPAN = 1 << 20  # a gather reads a row's whole span when it is at most this many ids


def header_bytes(header: dict, crc: int, room: int | None = None) -> bytes:
    text = json.dumps(header, ensure_ascii=False).encode("utf-8")
    if room is None:
        room = -(-(FIXED + len(text) + 64) // 64) * 64  # room for the final numbers, 64-aligned
    if FIXED + len(text) > room:
        raise ValueError("cache header outgrew its room")
    return MAGIC + room.to_bytes(8, "little") + crc.to_bytes(4, "little") + text.ljust(room - FIXED)


def _covered(raw_header: bytes) -> bytes:
    """The header bytes the checksum covers: all but the CRC field itself."""
    return raw_header[:len(MAGIC) + 8] + raw_header[FIXED:]


# -- temp files that prove they are ours -----------------------------------------------------------

def create_temp(directory: Path) -> tuple[Path, Any]:
    """A new temp file of ours in ``directory`` (O_EXCL: never an existing file), open for writing."""
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=directory)
    return Path(name), os.fdopen(fd, "wb")


def write_record(path: Path, kind: str, fields: dict) -> None:
    """A small JSON record of ours (``{"tui_trainer": kind, ...}``), written to a temp file and
    renamed into place. OSError when it cannot be written (nothing is left behind)."""
    tmp, handle = create_temp(path.parent)
    try:
        with handle:
            handle.write(json.dumps({"tui_trainer": kind, **fields}).encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temp_is_ours(path: Path) -> bool:
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return False
        with open(path, "rb") as handle:
            start = handle.read(len(JSON_MARK))
    except OSError:
        return False
    return start.startswith(MAGIC) or start == JSON_MARK


def remove_stale_temp_files(directory: Path) -> None:
    """Temp files of ours left by processes killed mid-write (kill -9): named by our prefix with a
    dead writer's pid, and starting with our magic. Anything else is someone else's: left alone."""
    for path in directory.glob(f"{TEMP_PREFIX}*"):
        try:
            pid = int(path.name[len(TEMP_PREFIX):].split("-", 1)[0])
            if pid == os.getpid() or pid <= 0:
                continue
            os.kill(pid, 0)
            continue  # a live writer's
        except ProcessLookupError:
            pass
        except (ValueError, OSError):  # not our name; or a live process of another user
            continue
        if _temp_is_ours(path):
            path.unlink(missing_ok=True)


# -- writing ---------------------------------------------------------------------------------------

class CacheWriter:
    """Ids streamed into a temp file beside the cache; ``commit`` fills in the header and renames."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.header = {**header, "format": FORMAT, "length": 10 ** 19}  # widest length: room for the real one
        self.room = len(header_bytes(self.header, 0))
        self.dtype = np.dtype(header["dtype"])
        self.length = 0
        self.crc = 0
        self.tmp, self.handle = create_temp(path.parent)
        self.handle.write(header_bytes(self.header, 0, self.room))  # (begins with MAGIC: provably ours)

    def write(self, ids: np.ndarray) -> None:
        if ids.dtype != self.dtype:
            if ids.size and int(ids.max()) > np.iinfo(self.dtype).max:
                raise ValueError("an id does not fit the cache's id type")
            ids = ids.astype(self.dtype)
        data = np.ascontiguousarray(ids.astype(ids.dtype.newbyteorder("<"), copy=False)).data
        self.crc = zlib.crc32(data, self.crc)
        self.length += ids.size
        self.handle.write(data)

    def commit(self, **extra) -> None:
        self.header.update(extra, length=self.length)
        raw = header_bytes(self.header, 0, self.room)
        crc = zlib.crc32(_covered(raw), self.crc)
        self.handle.seek(0)
        self.handle.write(header_bytes(self.header, crc, self.room))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


# -- reading ---------------------------------------------------------------------------------------

def read_cache(path: Path, progress: ts.ProgressFn | None = None) -> tuple[dict, TokenFile] | None:
    """The header and ids of a complete, intact cache file; None for anything else."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # (a FIFO there would block the open)
            return None
        with open(path, "rb") as handle:
            fixed = handle.read(FIXED)
            if len(fixed) != FIXED or not fixed.startswith(MAGIC):
                return None
            room = int.from_bytes(fixed[len(MAGIC):len(MAGIC) + 8], "little")
            if not FIXED < room <= MAX_HEADER:
                return None
            raw = fixed + handle.read(room - FIXED)
            header = json.loads(raw[FIXED:].decode("utf-8"))
            if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("dtype") not in ID_TYPES:
                return None
            dtype = np.dtype(header["dtype"]).newbyteorder("<")
            length = header["length"]
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                return None
            if os.fstat(handle.fileno()).st_size != room + length * dtype.itemsize:
                return None
            meter = ts.Meter("verifying cache", length * dtype.itemsize, progress, None)
            crc = 0
            while block := handle.read(ts.CHUNK_BYTES):
                crc = zlib.crc32(block, crc)
                meter.add(len(block))
            meter.finish()
            if zlib.crc32(_covered(raw), crc) != int.from_bytes(fixed[len(MAGIC) + 8:], "little"):
                return None
            ids = TokenFile(_Descriptor(os.dup(handle.fileno()), path, length), dtype, room, 0, length)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    return header, ids


class _Descriptor:
    """An open file descriptor, closed when the last ``TokenFile`` over it goes."""

    def __init__(self, fd: int, path: Path, length: int) -> None:
        self.fd, self.path, self.length = fd, path, length  # (length: the ids the file held when checked)

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class TokenFile:
    """A read-only 1-D array of ids in a file, read with ``os.pread``: ``len``, slices (views,
    nothing read), ``windows`` (a batch: one read per window), integer and integer-array indexing
    (one contiguous span per row), and ``np.asarray`` (reads it all: for tests and small corpora). A short read is the file cut
    under us: ``DataChanged``."""

    ndim = 1

    def __init__(self, file: _Descriptor, dtype: np.dtype, offset: int, start: int, length: int) -> None:
        self._file, self.dtype, self._offset, self._start, self._length = file, dtype, offset, start, length

    def __len__(self) -> int:
        return self._length

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def shape(self) -> tuple[int]:
        return (self._length,)

    @property
    def size(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> np.ndarray:
        """Ids ``[start, stop)`` of this view, from the file."""
        count = max(0, stop - start)
        nbytes = count * self.dtype.itemsize
        where = self._offset + (self._start + start) * self.dtype.itemsize
        data = os.pread(self._file.fd, nbytes, where) if nbytes else b""
        if len(data) != nbytes:
            raise self._cut_short()
        return np.frombuffer(data, dtype=self.dtype)

    def _cut_short(self) -> DataChanged:
        try:
            left = max(0, os.fstat(self._file.fd).st_size - self._offset) // self.dtype.itemsize
        except OSError:
            left = 0
        return DataChanged(f"the token cache {self._file.path} was cut short while the run read it "
                           f"({left:,} ids left of the {self._file.length:,} it held)")

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``ids[s : s + length]`` for each start, as rows: one read each (a training batch's windows)."""
        itemsize, fd = self.dtype.itemsize, self._file.fd
        nbytes = length * itemsize
        base = self._offset + self._start * itemsize
        starts = starts.tolist()
        if starts and (min(starts) < 0 or max(starts) + length > self._length):
            raise IndexError(f"a window is out of bounds for {self._length} ids")
        data = b"".join([os.pread(fd, nbytes, base + start * itemsize) for start in starts])
        if len(data) != nbytes * len(starts):
            raise self._cut_short()
        return np.frombuffer(data, dtype=self.dtype).reshape(len(starts), length)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        ids = self.read(0, self._length)
        return ids if dtype is None else ids.astype(dtype)

    def __iter__(self):
        for start in range(0, self._length, 1 << 16):
            yield from self.read(start, min(self._length, start + (1 << 16))).tolist()

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._length)
            if step != 1:
                return np.asarray(self)[key]
            return TokenFile(self._file, self.dtype, self._offset, self._start + start, max(0, stop - start))
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self._length if key < 0 else 0)
            if not 0 <= index < self._length:
                raise IndexError(f"index {int(key)} is out of bounds for {self._length} ids")
            return self.read(index, index + 1)[0]
        return self._gather(np.asarray(key))

    def _gather(self, index: np.ndarray) -> np.ndarray:
        if index.dtype == bool or index.ndim == 0:
            return np.asarray(self)[index]
        index = np.where(index < 0, index + self._length, index).astype(np.int64)
        if index.size and (int(index.min()) < 0 or int(index.max()) >= self._length):
            raise IndexError(f"an index is out of bounds for {self._length} ids")
        rows = index.reshape(-1, index.shape[-1]) if index.size else index.reshape(0, 0)
        out = np.empty(rows.shape, dtype=self.dtype)
        if rows.size and (rows.shape[1] == 1 or bool((np.diff(rows, axis=1) == 1).all())):
            return self.windows(rows[:, 0], rows.shape[1]).reshape(index.shape)  # contiguous rows
        for number, row in enumerate(rows):
            low, high = int(row.min()), int(row.max()) + 1
            if high - low <= max(MAX_SPAN, 4 * row.size):
                out[number] = self.read(low, high)[row - low]
            else:
                out[number] = [self.read(i, i + 1)[0] for i in row.tolist()]
        return out.reshape(index.shape)
