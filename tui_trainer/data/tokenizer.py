"""Tokenizers behind one small interface: ``char`` (one id per character) and byte-level BPE.

Both offer ``size``, ``encode`` (text → ids), ``encode_bytes`` (a chunk of UTF-8 bytes → a
numpy array of ids, the hot path of the token cache), ``decode``, ``fingerprint`` and
``record()`` (what config.json and checkpoints keep). ``load_tokenizer(run_dir)`` gives back
the tokenizer a run was trained with, for resume and sampling.

The char tokenizer keeps the original ``Vocabulary`` semantics: the vocabulary is the sorted
set of the corpus's characters and an id is a position in it, so runs made before the BPE
option existed keep their ids (and their loss trajectories) bit for bit.

A BPE tokenizer is Hugging Face ``tokenizers``' byte-level BPE (no unknown characters: every
byte is in the alphabet), trained offline on the training text only. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tui_trainer.bounded_read import read_bounded_text
from tui_trainer.errors import UserError

TOKENIZER_FILE = "tokenizer.json"  # a BPE run's tokenizer, in its run dir
DEFAULT_BPE_VOCAB = 4096
UNICODE_SIZE = 0x110000
# Where byte-level BPE text may be cut without changing any id: before a lone space or newline
# between two non-space characters (GPT-2's pre-tokenizer splits there in any case).
WORD_CUT = re.compile(r"(?<=\S)(?=[ \n]\S)")
MAX_REMEMBERED_WORDS = 300_000  # distinct words whose ids are kept (~80 MB at most)


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that spells each byte in a token's string (the
    printable bytes as themselves, the others from U+0100 on), as ``tokenizers``' ByteLevel has it."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    spelled: dict[str, int] = {}
    others = 0
    for byte in range(256):
        if byte in printable:
            spelled[chr(byte)] = byte
        else:
            spelled[chr(256 + others)] = byte
            others += 1
    return spelled


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id of the vocabulary."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} ids does not fit uint32")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_points(chunk: bytes) -> np.ndarray:
    """The Unicode code points of a chunk of valid UTF-8 (ASCII, the common case, without decoding)."""
    raw = np.frombuffer(chunk, dtype=np.uint8)
    if raw.size == 0 or int(raw.max()) < 0x80:
        return raw
    return np.frombuffer(chunk.decode("utf-8").encode("utf-32-le"), dtype=np.uint32)


class CharSet:
    """The set of characters seen so far, collected chunk by chunk (a presence table, no Python loop)."""

    def __init__(self) -> None:
        self.present = np.zeros(UNICODE_SIZE, dtype=bool)

    def add(self, chunk: bytes) -> None:
        points = code_points(chunk)
        if points.dtype == np.uint8:
            self.present[:256] |= np.bincount(points, minlength=256) > 0
        else:
            self.present[points] = True

    def chars(self) -> tuple[str, ...]:
        return tuple(chr(int(c)) for c in np.flatnonzero(self.present))  # ascending = sorted(set(text))


@dataclass(frozen=True)
class CharTokenizer:
    """Character-level vocabulary; id = position in ``chars`` (sorted, so it is stable)."""

    chars: tuple[str, ...]
    kind = "char"

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def fingerprint(self) -> str:
        return _sha256("char\0" + "".join(self.chars))

    def _table(self, dtype: np.dtype) -> np.ndarray:
        """Code point -> id, in ``dtype``; the largest value of the type marks a character outside
        the vocabulary (a vocabulary never uses it: its ids stop at size - 1 < the type's max + 1)."""
        tables = self.__dict__.setdefault("_tables", {})
        if dtype not in tables:
            points = [ord(c) for c in self.chars]
            # at least 256 entries: a chunk of bytes < 0x80 is looked up without decoding
            table = np.full(max(max(points, default=0) + 1, 256), np.iinfo(dtype).max, dtype=dtype)
            table[points] = np.arange(len(points))
            tables[dtype] = table
        return tables[dtype]

    def encode_bytes(self, chunk: bytes, dtype: np.dtype = np.dtype(np.int64)) -> np.ndarray:
        """Ids of a chunk of valid UTF-8 that holds whole characters, as ``dtype``."""
        dtype = np.dtype(np.int64 if dtype.kind == "i" else dtype)
        points = code_points(chunk)
        wide = np.dtype(np.uint32) if dtype == np.int64 else dtype  # room for the "unknown" mark
        table = self._table(wide)
        if points.size and int(points.max()) >= len(table):
            raise KeyError("a character outside the vocabulary")
        ids = np.take(table, points)
        if ids.size and self.size <= np.iinfo(wide).max and int(ids.max()) == np.iinfo(wide).max:
            missing = chr(int(points[np.argmax(ids)]))
            raise KeyError(f"character {missing!r} is outside the vocabulary")
        return ids.astype(dtype, copy=False)

    def encode(self, text: str) -> torch.Tensor:
        return torch.from_numpy(self.encode_bytes(text.encode("utf-8")))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def id_bytes(self) -> list[bytes]:
        """Each id's UTF-8 bytes (index = id)."""
        return self.__dict__.setdefault("_id_bytes", [c.encode("utf-8") for c in self.chars])

    def record(self) -> dict:
        return {"kind": "char", "vocab_size": self.size, "fingerprint": self.fingerprint}

    def save(self, run_dir: str | Path) -> None:
        """Nothing to write: the characters travel in config.json's ``vocab``."""


class BpeTokenizer:
    """A ``tokenizers.Tokenizer`` (byte-level BPE, or any tokenizers file a user brings)."""

    kind = "bpe"

    def __init__(self, tokenizer, source: str = "trained") -> None:
        self.tokenizer = tokenizer
        self.source = source  # "trained" here, or the path of the user's file
        self.json = tokenizer.to_str()
        self.fingerprint = _sha256(self.json)
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._words: dict[str, tuple[int, ...]] | None = {} if self.words_encode_alone else None

    @classmethod
    def from_json(cls, text: str, source: str) -> "BpeTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), source)

    # A BPE vocabulary's ids are not characters; `chars` lets code written for the char vocabulary
    # (e.g. the UI's sample of tokens) show something sensible.
    @property
    def chars(self) -> tuple[str, ...]:
        return tuple(self.tokenizer.decode([i]) for i in range(self.size))

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        fast = getattr(self.tokenizer, "encode_batch_fast", None)  # no offsets: tokenizers >= 0.20
        try:
            encoded = (fast or self.tokenizer.encode_batch)(texts, add_special_tokens=False)
        except Exception as exc:  # noqa: BLE001 — tokenizers raises a bare Exception, e.g. a
            # word-level file whose unknown token is not in its vocabulary meets a word it lacks
            detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise UserError(f"tokenizer {self.source} cannot encode this text ({detail})",
                            "give the tokenizer an unknown token that is in its vocabulary (e.g. [UNK]), "
                            "or use --tokenizer bpe") from None
        return [e.ids for e in encoded]

    @property
    def words_encode_alone(self) -> bool:
        """True for a plain byte-level BPE (what ``train_bpe`` makes, and GPT-2's file): a piece of
        text between two word cuts (see WORD_CUT) then encodes the same alone as in the whole."""
        spec = json.loads(self.json)
        pre = spec.get("pre_tokenizer") or {}
        return (spec.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                and not pre.get("add_prefix_space", False) and not spec.get("added_tokens"))

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Ids of several texts. A plain byte-level BPE encodes each distinct word once (the
        pre-tokenizer of ``tokenizers`` is slow, ~1 MB/s, and text repeats its words); other
        tokenizers encode the texts with ``encode_batch``, spread over the cores."""
        if self._words is None:
            return [np.asarray(ids, dtype=np.int64) for ids in self._encode_batch(texts)]
        words = self._words
        out = []
        for text in texts:
            parts = WORD_CUT.split(text)
            missing = list(set(parts).difference(words))
            if missing:
                if len(words) + len(missing) > MAX_REMEMBERED_WORDS:
                    words.clear()  # bounded memory on a corpus of endless distinct words
                words.update(zip(missing, map(tuple, self._encode_batch(missing))))
            out.append(np.fromiter(itertools.chain.from_iterable(map(words.__getitem__, parts)), dtype=np.int64))
        return out

    def encode_bytes(self, chunk: bytes) -> np.ndarray:
        return self.encode_texts([chunk.decode("utf-8")])[0]

    def encode(self, text: str) -> torch.Tensor:
        return torch.from_numpy(self.encode_texts([text])[0])

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_bytes(self) -> list[bytes] | None:
        """Each id's exact bytes (index = id) for a byte-level BPE, whose ids may end mid-character
        (text is then decoded as bytes: a character split over two ids is shown whole); None for a
        tokenizers file of another kind (its ids decode alone only approximately)."""
        if "_id_bytes" not in self.__dict__:
            self._id_bytes = self._spell_ids()
        return self._id_bytes

    def _spell_ids(self) -> list[bytes] | None:
        spec = json.loads(self.json)
        if (spec.get("decoder") or {}).get("type") != "ByteLevel" or spec.get("added_tokens"):
            return None
        alphabet = byte_level_alphabet()
        spelled: list[bytes | None] = [None] * self.size
        for token, index in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if not 0 <= index < self.size or any(c not in alphabet for c in token):
                return None
            spelled[index] = bytes(alphabet[c] for c in token)
        return None if None in spelled else spelled  # (a vocabulary with gaps: no exact bytes)

    def record(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.size, "fingerprint": self.fingerprint, "source": self.source}

    def save(self, run_dir: str | Path) -> None:
        path = Path(run_dir) / TOKENIZER_FILE
        tmp = path.with_name(f".{TOKENIZER_FILE}.tmp")
        tmp.write_text(self.json, encoding="utf-8")
        tmp.replace(path)


Tokenizer = CharTokenizer | BpeTokenizer


def train_bpe(texts: Iterator[str], vocab_size: int) -> BpeTokenizer:
    """A byte-level BPE of (at most) ``vocab_size`` ids learnt from ``texts``.

    No prefix space: a piece of text encodes the same whether it starts a chunk or not, so the
    corpus can be encoded in pieces (see token_cache.safe_cuts) and give the ids of the whole.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return BpeTokenizer(tokenizer)


def fewer_tokens_note(learnt: int, asked: int | None) -> str | None:
    """What to say when a BPE learnt fewer ids than asked (``asked`` None: the default). The trainer
    merges the most frequent pair of neighbouring tokens inside a word until it has the ids asked for
    or no word has two tokens left: a small text runs out of pairs first."""
    wanted = asked or DEFAULT_BPE_VOCAB
    if learnt >= wanted:
        return None
    of = f"of the {wanted:,} asked" if asked else f"of the default {wanted:,}"
    return f"BPE learnt {learnt:,} tokens {of}: nothing left to merge, every word of the text is one token"


def load_tokenizer_file(path: str | Path) -> BpeTokenizer:
    """A tokenizers JSON file the user brings (``--tokenizer FILE.json``), or a UserError."""
    path = Path(path)
    try:
        text = read_bounded_text(path, "tokenizer file", "pass a tokenizers .json file")
    except FileNotFoundError:
        raise UserError(f"tokenizer file {path} does not exist", "pass --tokenizer char, bpe or a tokenizers .json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UserError(f"cannot read tokenizer file {path} ({reason})", "pass a tokenizers .json file") from None
    try:
        tokenizer = BpeTokenizer.from_json(text, str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"tokenizer file {path} does not load ({detail})",
                        "pass a file saved by Hugging Face tokenizers (tokenizer.save)") from None
    if tokenizer.size < 2:
        raise UserError(f"tokenizer file {path} has {tokenizer.size} token(s): nothing to learn",
                        "pass a tokenizer with a real vocabulary")
    return tokenizer


def tokenizer_from_record(record: dict, run_dir: str | Path) -> Tokenizer:
    """The tokenizer a run's config.json or checkpoint describes (``vocab`` holds the characters)."""
    info = record.get("tokenizer") or {"kind": "char"}
    if info["kind"] == "char":
        return CharTokenizer(tuple(record["vocab"]))
    path = Path(run_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: this run was trained with a BPE tokenizer saved there",
                        "restore tokenizer.json from a backup of the run dir")
    tokenizer = load_tokenizer_file(path)
    if tokenizer.fingerprint != info["fingerprint"]:
        raise UserError(f"{path} is not the tokenizer this run was trained with", "restore the run's own tokenizer.json")
    return tokenizer


def load_tokenizer(run_dir: str | Path) -> Tokenizer:
    """The tokenizer of the run in ``run_dir`` (from its config.json), e.g. to decode samples."""
    config = Path(run_dir) / "config.json"
    try:
        record = json.loads(read_bounded_text(config, "run config", "pass the run dir of a tui-trainer run"))
    except (OSError, ValueError):
        raise UserError(f"{config} is missing or unreadable", "pass the run dir of a tui-trainer run") from None
    return tokenizer_from_record(record, run_dir)
