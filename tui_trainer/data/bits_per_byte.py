"""Bits per byte: a validation loss that does not depend on the tokenizer.

A loss in nats per token cannot compare a char run with a BPE run (a BPE token holds ~3-4
characters). Dividing the *summed* loss by the bytes of text it predicted can:

    val_bpb = (summed val loss in nats) / (ln 2 x UTF-8 bytes of the validation targets)

The bytes are counted exactly from the validation windows: the targets of window i are tokens
``i*block_size + 1 .. (i+1)*block_size`` of the split, and every id has a fixed byte length —
a character's UTF-8 length, or a byte-level BPE token's bytes (one per character of its
ByteLevel-alphabet string). A tokenizers file of another kind is measured by decoding each id
alone, which is exact for most vocabularies but not promised (``exact_bytes`` says which).
"""

from __future__ import annotations

import json
import math

import numpy as np

from tui_trainer.data.tokenizer import BpeTokenizer, CharTokenizer, Tokenizer

CHUNK = 1 << 22  # ids counted at a time: bounded memory on a validation split of any size


def exact_bytes(tokenizer: Tokenizer) -> bool:
    """Does ``token_byte_lengths`` give each id's exact bytes? (char, and byte-level BPE: yes)"""
    if isinstance(tokenizer, CharTokenizer):
        return True
    return (json.loads(tokenizer.json).get("decoder") or {}).get("type") == "ByteLevel"


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes of each id's text, as int64 (index = id)."""
    if isinstance(tokenizer, CharTokenizer):
        return np.array([len(c.encode("utf-8")) for c in tokenizer.chars], dtype=np.int64)
    assert isinstance(tokenizer, BpeTokenizer)
    hf = tokenizer.tokenizer
    special = {token.content for token in hf.get_added_tokens_decoder().values()}
    byte_level = exact_bytes(tokenizer)
    lengths = np.zeros(tokenizer.size, dtype=np.int64)
    for token, index in hf.get_vocab(with_added_tokens=True).items():
        if byte_level and token not in special:
            lengths[index] = len(token)  # the ByteLevel alphabet spells each byte as one character
        else:
            lengths[index] = len(hf.decode([index], skip_special_tokens=False).encode("utf-8"))
    return lengths


def validation_bytes(val_tokens: np.ndarray, block_size: int, windows: int, byte_lengths: np.ndarray) -> int:
    """UTF-8 bytes of the targets of the first ``windows`` validation windows (those a pass reads)."""
    stop = windows * block_size + 1
    if windows < 0 or stop > len(val_tokens):
        raise ValueError(f"{windows} windows of {block_size} need {stop} tokens; the split has {len(val_tokens)}")
    counts = np.zeros(len(byte_lengths), dtype=np.int64)
    for start in range(1, stop, CHUNK):
        ids = np.asarray(val_tokens[start:min(start + CHUNK, stop)], dtype=np.int64)
        counts += np.bincount(ids, minlength=len(byte_lengths))
    return int(counts @ byte_lengths)


def bits_per_byte(loss_sum_nats: float, n_bytes: int) -> float:
    """Summed loss (nats) over the bytes it predicted, in bits per byte."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte")
    return loss_sum_nats / (math.log(2) * n_bytes)


def val_bits_per_byte(val_loss: float, tokens: int, n_bytes: int) -> float:
    """From the engine's token-weighted *mean* validation loss over ``tokens`` targets."""
    return bits_per_byte(val_loss * tokens, n_bytes)
