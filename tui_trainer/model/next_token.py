"""Which ids sampling may pick next: never one the training text never held (its embedding is
untrained: data/untrained.py), and, with a tokenizer whose ids are bytes that may end or start
mid-character (byte-level BPE), never one that would make the text invalid UTF-8 after what was
written — the U+FFFD an undertrained model's byte soup showed. A char vocabulary (every id a whole
character) needs no UTF-8 rule: with no untrained ids the mask is None and every choice is exactly
what it was without one.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

import torch


def untrained_mask(untrained_ids: Sequence[int], vocab_size: int) -> torch.Tensor | None:
    """The ids never to pick as a mask over the logits (on the CPU), or None when there are none."""
    ids = [i for i in untrained_ids if 0 <= i < vocab_size]
    if not ids:
        return None
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[ids] = True
    return mask


def _complete(spelled: bytes) -> bool:
    """Is ``spelled`` whole characters of valid UTF-8?"""
    try:
        spelled.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _can_finish(tail: bytes) -> bool:
    """Can continuation bytes finish the character ``tail`` (1-3 bytes) begins? Python's incremental
    decoder accepts some beginnings no byte can finish (ED A0: a surrogate; E0 80: overlong): only
    the second byte is restricted (E0 A0.., ED ..9F, F0 90.., F4 ..8F), so one of 80, 90, A0 as the
    second and 80s after it tells."""
    if not tail:
        return True
    lead = tail[0]
    length = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
    if len(tail) >= length:
        return False
    seconds = (b"\x80", b"\x90", b"\xa0") if len(tail) == 1 else (b"",)
    for second in seconds:
        whole = tail + second
        try:
            (whole + b"\x80" * (length - len(whole))).decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


class NextTokenRule:
    """The mask of ids not to pick next (``mask()``), told each id taken (``took``). The UTF-8 part
    depends only on the bytes of a character begun and not yet finished (at most 3), so its masks
    are computed once per such tail and kept: a few per run of sampling."""

    def __init__(self, vocab_size: int, untrained_ids: Sequence[int] = (),
                 id_bytes: Sequence[bytes] | None = None) -> None:
        self.vocab_size = vocab_size
        self.untrained = untrained_mask(untrained_ids, vocab_size)
        # (ids beyond the tokenizer's, a padded embedding's rows, are left to the untrained rule)
        whole = id_bytes is None or all(_complete(b) for b in id_bytes)
        self.id_bytes = None if whole else list(id_bytes)[:vocab_size]
        # After half a character only an id that starts with a continuation byte can follow: the few
        # such ids are all a tail's mask needs to check (a 50,257-id vocabulary has a few hundred).
        self.continuing = [] if whole else [i for i, spelled in enumerate(self.id_bytes)
                                            if spelled and 0x80 <= spelled[0] <= 0xBF]
        self.tail = b""  # the unfinished character's bytes so far
        self.masks: dict[bytes, torch.Tensor | None] = {}

    def mask(self) -> torch.Tensor | None:
        if self.id_bytes is None:
            return self.untrained
        if self.tail not in self.masks:
            self.masks[self.tail] = self._mask_after(self.tail)
        return self.masks[self.tail]

    def took(self, token_id: int) -> None:
        if self.id_bytes is not None and token_id < len(self.id_bytes):
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            decoder.decode(self.tail + self.id_bytes[token_id])
            self.tail = decoder.getstate()[0]  # the bytes of a character still unfinished

    def _mask_after(self, tail: bytes) -> torch.Tensor | None:
        invalid = torch.full((self.vocab_size,), bool(tail), dtype=torch.bool)
        decoder = codecs.getincrementaldecoder("utf-8")("strict")  # (an unfinished character at the end is fine)
        for token_id in self.continuing if tail else range(len(self.id_bytes)):
            spelled = self.id_bytes[token_id]
            decoder.reset()
            try:
                decoder.decode(tail + spelled)
            except UnicodeDecodeError:
                invalid[token_id] = True
                continue
            invalid[token_id] = not _can_finish(decoder.getstate()[0])
        banned = invalid if self.untrained is None else invalid | self.untrained
        if bool(banned.all()):  # nothing may follow (no id continues it): the untrained rule alone
            return self.untrained
        return banned if bool(banned.any()) else None
