"""The ids the training text never holds. A byte-level BPE keeps all 256 bytes in its alphabet
(English text uses about 100 of them), and a character may occur only in the validation text:
such an id's embedding learns nothing of its own, so a sample that picks it writes a control
character or half a UTF-8 character (shown as U+FFFD). The sampler leaves them out
(model/sampling.py, ``untrained_mask``).

Counted once from the token cache's training split (early out once every id is seen) and
remembered in a small record beside the cache, so a later start of a big corpus does not count
again; the run carries them to its sampler and saves them in its checkpoints for ``sample``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tui_trainer.data.token_file import write_record

CHUNK = 1 << 22  # ids counted at a time: bounded memory on a corpus of any size


def untrained_ids(train_tokens, vocab_size: int) -> tuple[int, ...]:
    """Ids below ``vocab_size`` that ``train_tokens`` (an array or a TokenFile) never holds."""
    seen = np.zeros(vocab_size, dtype=bool)
    for start in range(0, len(train_tokens), CHUNK):
        ids = np.asarray(train_tokens[start:start + CHUNK])
        seen |= np.bincount(ids, minlength=vocab_size)[:vocab_size] > 0
        if seen.all():
            break
    return tuple(int(i) for i in np.flatnonzero(~seen))


def remembered_untrained_ids(cache_path: Path, train_tokens, vocab_size: int) -> tuple[int, ...]:
    """``untrained_ids`` of a token cache's training split, from the record beside the cache when
    it was counted before (the cache's name is its content's key; the split is in the record's)."""
    record = cache_path.with_name(f"untrained-{cache_path.stem}-{len(train_tokens)}.json")
    try:
        ids = json.loads(record.read_text(encoding="utf-8"))["ids"]
        if isinstance(ids, list) and all(type(i) is int and 0 <= i < vocab_size for i in ids):
            return tuple(ids)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ids = untrained_ids(train_tokens, vocab_size)
    try:
        write_record(record, "untrained ids", {"ids": list(ids)})
    except OSError:
        pass  # not remembered: counted again next time
    return ids
