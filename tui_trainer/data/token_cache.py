"""Tokenize once, stream, cache: the corpus's ids in a file that later starts open in a second.

The ids go to ``<cache dir>/<key>.tokens``: a small JSON header (length, id type, the tokenizer)
and then the ids as the smallest unsigned type that holds the vocabulary, one CRC-32 over both
(the file's format and how its ids are read: token_file.py).
The key is the content fingerprint of the data and the tokenizer's settings, so a changed file
or another tokenizer never meets an old cache. The file is written to a temp name and renamed
when complete; a cache whose size, checksum or header does not match is rebuilt (with a note),
never trusted. Temp files of killed writers are cleaned up only when their name and their first
bytes are ours: a user's file in --cache-dir is never touched. A stop (Ctrl-C) or a full disk
while writing leaves no half file behind.

Tokenization reads the text in chunks, so memory stays flat whatever the corpus size; the char
tokenizer maps chunks with numpy, BPE encodes pieces cut where the byte-level pre-tokenizer
would cut anyway (so the ids equal those of encoding the whole text at once).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tui_trainer.data import text_source as ts
from tui_trainer.data.token_file import (
    MAGIC,
    CacheWriter,
    TokenFile,
    read_cache,
    remove_stale_temp_files,
    write_record,
)
from tui_trainer.data.tokenizer import BpeTokenizer, CharSet, CharTokenizer, Tokenizer, id_dtype, train_bpe
from tui_trainer.errors import UserError

PIECE_CHARS = 1 << 16  # BPE: text per encode_batch item (the batch spreads over the cores)
# A BPE is learnt from at most this much of the training text, taken in evenly spread chunks:
# the pre-tokenizer of `tokenizers` reads ~1-3 MB/s, and word statistics settle long before 1 GB.
BPE_SAMPLE_BYTES = 32 << 20
SETTLED_SECONDS = 5  # a file unchanged for this long has its fingerprint remembered by its stat
# Where a byte-level BPE piece may end without changing any id: before a lone space or newline
# between two non-space characters (the GPT-2 pre-tokenizer splits there in any case).
SAFE_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tui-trainer"


@dataclass(frozen=True)
class TokenIds:
    """The corpus as ids, read from the cache (never all in memory)."""

    ids: TokenFile  # read with plain reads as the windows need them (token_file.py)
    n_train: int | None  # BPE: ids of the training text (the split is made on the text); char: None
    tokenizer: Tokenizer
    data_fingerprint: str
    cache_path: Path
    built: bool  # True when this call tokenized; False when the cache was reused
    notes: tuple[str, ...] = ()  # what the user should know (a damaged cache rebuilt)


# -- preparing the ids ----------------------------------------------------------------------------

def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:32]


def _stats(source: ts.TextSource) -> list:
    stats = []
    for file in source.files:
        st = file.stat()
        stats.append([str(file), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns])
    return stats


def source_fingerprint(source: ts.TextSource, cache_dir: Path, progress: ts.ProgressFn | None = None,
                       cancel: ts.CancelFn | None = None, chunk_bytes: int = ts.CHUNK_BYTES) -> str:
    """The content fingerprint, hashed once and then remembered by the files' size, times and
    inode (as git's index does), so a cached start does not read a big corpus twice. A file
    changed in the last seconds is not remembered: its next change could keep the same times."""
    index = cache_dir / f"source-{_key(str(source.path))}.json"
    try:
        stats = _stats(source)
    except OSError:
        stats = None
    try:
        record = json.loads(index.read_text(encoding="utf-8"))
        if stats is not None and record["stats"] == stats:
            return record["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    fingerprint = ts.fingerprint(source, progress, cancel, chunk_bytes)
    try:
        newest = max(max(s[2], s[4]) for s in stats) if stats else time.time_ns()
        settled = time.time_ns() - newest > SETTLED_SECONDS * 10 ** 9
        if settled and _stats(source) == stats:
            write_record(index, "source fingerprint", {"stats": stats, "fingerprint": fingerprint})
    except OSError:
        pass  # not remembered: hashed again next time
    return fingerprint


def bpe_pieces(text: str, piece_chars: int = PIECE_CHARS) -> tuple[list[str], str]:
    """``text`` cut at safe points into pieces of about ``piece_chars``, and the rest after the last cut."""
    pieces, start = [], 0
    while start + piece_chars < len(text):
        match = SAFE_CUT.search(text, start + piece_chars)
        if match is None:
            break
        pieces.append(text[start:match.start()])
        start = match.start()
    return pieces, text[start:]


def bpe_texts(chunks: Iterator[bytes], piece_chars: int = PIECE_CHARS) -> Iterator[list[str]]:
    """Lists of text pieces for ``encode_batch``; an empty list marks the train/val split point.
    A piece with no safe cut for 4 chunks' worth of text (no spaces, no newlines) is cut anyway."""
    rest = ""
    for chunk in chunks:
        if not chunk:  # the split point: the training text ends here
            if rest:
                yield [rest]
            rest = ""
            yield []
            continue
        pieces, rest = bpe_pieces(rest + chunk.decode("utf-8"), piece_chars)
        if len(rest) > 4 * max(piece_chars, len(chunk)):
            pieces, rest = pieces + [rest], ""
        if pieces:
            yield pieces
    if rest:
        yield [rest]


def _split_byte(total: int, val_split: float) -> int:
    """Where a BPE corpus's training text ends: the first (1 - val_split) of its bytes."""
    return total - int(round(total * val_split))


def prepare_ids(source: ts.TextSource, tokenizer: str | Tokenizer, cache_dir: Path, val_split: float,
                vocab_size: int | None = None, progress: ts.ProgressFn | None = None,
                cancel: ts.CancelFn | None = None, chunk_bytes: int = ts.CHUNK_BYTES,
                piece_chars: int = PIECE_CHARS) -> TokenIds:
    """The corpus's ids from the cache, tokenizing (and training a BPE) first when needed.

    ``tokenizer`` is "char", "bpe" (trained here on the training text, ``vocab_size`` ids) or a
    loaded tokenizer (a user's file, or the one a resumed run was trained with).
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):  # (a new file of its own: never one of the user's)
            pass
    except OSError as exc:
        raise UserError(f"cannot use the token cache dir {cache_dir} ({exc.strerror or exc})",
                        "pass a writable --cache-dir") from None
    remove_stale_temp_files(cache_dir)
    data_fp = source_fingerprint(source, cache_dir, progress, cancel, chunk_bytes)
    if tokenizer == "char":
        return _prepare_char(source, cache_dir, data_fp, progress, cancel, chunk_bytes)
    if tokenizer == "bpe":
        tokenizer = _trained_bpe(source, cache_dir, data_fp, val_split, vocab_size, progress, cancel,
                                 chunk_bytes, piece_chars)
    assert isinstance(tokenizer, BpeTokenizer)
    path = cache_dir / f"{_key(data_fp, tokenizer.fingerprint, val_split, piece_chars)}.tokens"
    found, notes = _cached(path, progress)
    if found is not None:
        return TokenIds(found[1], found[0]["n_train"], tokenizer, data_fp, path, built=False)
    ts.check_text(source, progress=progress, cancel=cancel, chunk_bytes=chunk_bytes)
    header = {"dtype": id_dtype(tokenizer.size).name, "data": data_fp,
              "tokenizer": tokenizer.record()}
    split = _split_byte(ts.stream_bytes(source), val_split)
    meter = ts.Meter("tokenizing", source.total_bytes, progress, cancel)

    def fill(writer: CacheWriter) -> None:
        n_train = None
        chunks = ts.text_chunks(source, chunk_bytes, split_at=split, meter=meter)
        for pieces in bpe_texts(chunks, piece_chars):
            if not pieces:
                n_train = writer.length
                continue
            for ids in tokenizer.encode_texts(pieces):
                writer.write(ids)
        writer.commit(n_train=n_train)

    header, ids = _build_cache(path, header, cache_dir, meter, fill)
    return TokenIds(ids, header["n_train"], tokenizer, data_fp, path, built=True, notes=notes)


def _prepare_char(source: ts.TextSource, cache_dir: Path, data_fp: str, progress, cancel,
                  chunk_bytes: int) -> TokenIds:
    path = cache_dir / f"{_key(data_fp, 'char')}.tokens"
    found, notes = _cached(path, progress)
    if found is not None:
        return TokenIds(found[1], None, CharTokenizer(tuple(found[0]["chars"])), data_fp, path, built=False)
    chars = CharSet()
    ts.check_text(source, on_chunk=chars.add, progress=progress, cancel=cancel, chunk_bytes=chunk_bytes)
    tokenizer = CharTokenizer(chars.chars())
    if tokenizer.size < 2:
        raise UserError(f"the data holds a single character ({tokenizer.chars[0]!r}): there is nothing to learn",
                        "pass text with more than one distinct character")
    header = {"dtype": id_dtype(tokenizer.size).name, "data": data_fp,
              "tokenizer": tokenizer.record(), "chars": list(tokenizer.chars), "n_train": None}
    meter = ts.Meter("tokenizing", source.total_bytes, progress, cancel)

    def fill(writer: CacheWriter) -> None:
        for chunk in ts.text_chunks(source, chunk_bytes, meter=meter):
            writer.write(tokenizer.encode_bytes(chunk, writer.dtype))
        writer.commit()

    _, ids = _build_cache(path, header, cache_dir, meter, fill)
    return TokenIds(ids, None, tokenizer, data_fp, path, built=True, notes=notes)


def _trained_bpe(source, cache_dir: Path, data_fp: str, val_split: float, vocab_size: int | None,
                 progress, cancel, chunk_bytes: int, piece_chars: int) -> BpeTokenizer:
    """The BPE learnt from this data's training text: from the cache when it was learnt before."""
    from tokenizers import __version__ as tokenizers_version

    path = cache_dir / f"bpe-{_key(data_fp, vocab_size, val_split, BPE_SAMPLE_BYTES, tokenizers_version)}.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return BpeTokenizer.from_json(record["tokenizer"], "trained")
        except Exception:  # a damaged file (or one of an older version): learn it again
            path.unlink(missing_ok=True)
    ts.check_text(source, progress=progress, cancel=cancel, chunk_bytes=chunk_bytes)
    split = _split_byte(ts.stream_bytes(source), val_split)
    meter = ts.Meter("training tokenizer", split, progress, cancel)

    every = max(1, -(-split // BPE_SAMPLE_BYTES))  # learn from one chunk in `every`

    def sampled_chunks() -> Iterator[bytes]:
        for index, chunk in enumerate(ts.text_chunks(source, chunk_bytes, split_at=split, meter=meter)):
            if not chunk:
                yield chunk  # the split point: the validation text is never seen
                return
            if index % every == 0:
                yield chunk

    def training_text() -> Iterator[str]:
        for pieces in bpe_texts(sampled_chunks(), piece_chars):
            if not pieces:
                return
            yield from pieces

    tokenizer = train_bpe(training_text(), vocab_size)
    meter.finish()
    try:
        write_record(path, "bpe tokenizer", {"tokenizer": tokenizer.json})
    except OSError:
        pass  # no room to keep it: it is learnt again next time
    return tokenizer


def _cached(path: Path, progress: ts.ProgressFn | None) -> tuple[tuple[dict, TokenFile] | None, tuple[str, ...]]:
    """The cache at ``path`` when it is intact and its header makes sense; else None, with a note
    when there was a file (damaged: it is rebuilt, never trusted)."""
    found = read_cache(path, progress)
    if found is not None and _header_makes_sense(*found):
        return found, ()
    if not path.exists():
        return None, ()
    older = False
    if path.is_file():  # (a FIFO would block the open)
        try:
            with open(path, "rb") as handle:
                start = handle.read(len(MAGIC))
            older = start[:6] == MAGIC[:6] and start != MAGIC  # "TUITOK1\n": before the header was covered
        except OSError:
            pass
    if older:
        return None, (f"the token cache {path} is of an older format: rebuilt",)
    return None, (f"the token cache {path} was damaged (its size, checksum or header did not match): rebuilt",)


def _header_makes_sense(header: dict, ids: TokenFile) -> bool:
    n_train, chars = header.get("n_train"), header.get("chars")
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int)
                                or not 0 <= n_train <= len(ids)):
        return False
    if "chars" in header:
        if not isinstance(chars, list) or len(set(chars)) != len(chars) or len(chars) < 2:
            return False
        if not all(isinstance(c, str) and len(c) == 1 for c in chars) or id_dtype(len(chars)) != ids.dtype:
            return False
    return True


def _build_cache(path: Path, header: dict, cache_dir: Path, meter, fill) -> tuple[dict, TokenFile]:
    """Write a cache file with ``fill(writer)`` (which commits it), or leave none behind (a stop, a
    full disk); then map what was written, exactly as a later start will."""
    writer = _open_writer(path, header)
    try:
        fill(writer)
    except BaseException as exc:
        writer.discard()
        _raise_for_disk(exc, cache_dir)
        raise
    meter.finish()
    return read_cache(path)


def _open_writer(path: Path, header: dict) -> CacheWriter:
    try:
        return CacheWriter(path, header)
    except OSError as exc:
        raise UserError(f"cannot write the token cache in {path.parent} ({exc.strerror or exc})",
                        "pass a writable --cache-dir") from None


def _raise_for_disk(exc: BaseException, cache_dir: Path) -> None:
    if isinstance(exc, OSError):
        raise UserError(f"cannot write the token cache in {cache_dir} ({exc.strerror or exc})",
                        "free some space there, or pass another --cache-dir") from None
