"""val_bpb: summed val loss over ln 2 x the UTF-8 bytes of the validation targets, counted exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tui_trainer.data.bits_per_byte import (
    bits_per_byte,
    exact_bytes,
    token_byte_lengths,
    val_bits_per_byte,
    validation_bytes,
)
from tui_trainer.data.tokenizer import CharTokenizer, train_bpe

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak — café, naïve, 東京, 🙂.\n" * 40)


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted (written out here, independent of the code under test)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def test_char_windows_count_the_utf8_bytes_of_their_targets():
    tokenizer = CharTokenizer.from_text(TEXT)
    ids = tokenizer.encode(TEXT).numpy()
    block, windows = 16, 9
    targets = ids[1:windows * block + 1]
    expected = len(tokenizer.decode(targets).encode("utf-8"))
    assert expected > len(targets)  # multibyte characters are among them
    assert validation_bytes(ids, block, windows, token_byte_lengths(tokenizer)) == expected


def test_byte_level_bpe_tokens_are_counted_by_their_bytes():
    tokenizer = train_bpe(iter([TEXT]), 300)
    assert exact_bytes(tokenizer)
    ids = tokenizer.encode(TEXT).numpy()
    lengths = token_byte_lengths(tokenizer)
    decoder = gpt2_byte_decoder()
    vocab = {i: t for t, i in tokenizer.tokenizer.get_vocab().items()}
    token_bytes = [bytes(decoder[c] for c in vocab[int(i)]) for i in ids]
    assert b"".join(token_bytes) == TEXT.encode("utf-8")  # the tokens' bytes are the text's
    block, windows = 8, 20
    expected = sum(len(b) for b in token_bytes[1:windows * block + 1])
    assert validation_bytes(ids, block, windows, lengths) == expected
    assert int(lengths[ids].sum()) == len(TEXT.encode("utf-8"))


def test_windows_beyond_the_split_are_a_bug_not_a_silent_short_count():
    ids = np.zeros(33, dtype=np.uint8)
    assert validation_bytes(ids, 16, 2, np.ones(1, dtype=np.int64)) == 32
    with pytest.raises(ValueError):
        validation_bytes(ids, 16, 3, np.ones(1, dtype=np.int64))


def test_a_uniform_guess_over_256_single_bytes_is_8_bits_per_byte():
    tokens, n_bytes = 1000, 1000
    assert bits_per_byte(tokens * math.log(256), n_bytes) == pytest.approx(8.0)
    assert val_bits_per_byte(math.log(256), tokens, n_bytes) == pytest.approx(8.0)
    # the same text as 250 BPE tokens of 4 bytes each, at 4 x the nats per token: the same bits per byte
    assert val_bits_per_byte(4 * math.log(256), 250, n_bytes) == pytest.approx(8.0)
