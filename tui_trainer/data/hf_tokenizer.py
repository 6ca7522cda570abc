"""Tokenizers in Hugging Face's files, both ways: what an export writes, what --init-from reads.

Out: a BPE run's tokenizer.json goes as it is; a character vocabulary becomes a ``tokenizers``
file that encodes to exactly our ids (a WordLevel model over the characters, a pre-tokenizer
that isolates every character, a decoder that joins them back without spaces). Beside it,
tokenizer_config.json names the class, so ``AutoTokenizer.from_pretrained(folder)`` loads it
(and never re-derives GPT-2's own pipeline from ``model_type``).

In: a folder's tokenizer.json, else GPT-2's older vocab.json + merges.txt (a byte-level BPE
without prefix space, as GPT2TokenizerFast builds it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tui_trainer.bounded_read import check_bounded_file
from tui_trainer.config_checks import MAX_VOCAB
from tui_trainer.data.tokenizer import TOKENIZER_FILE, BpeTokenizer, CharTokenizer, Tokenizer, load_tokenizer_file
from tui_trainer.errors import UserError

END_OF_TEXT = "<|endoftext|>"  # GPT-2's end-of-text token, when a vocabulary has it
EVERY_CHARACTER = r"[\s\S]"  # tokenizers' regexes are Oniguruma's: no (?s) flag; this matches any one character


def char_tokenizer_json(chars: tuple[str, ...]) -> str:
    """A ``tokenizers`` JSON whose ids are our char ids (position in ``chars``); an unknown
    character is an error when encoding, as in our tokenizer."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HfTokenizer

    tokenizer = HfTokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(EVERY_CHARACTER), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer.to_str()


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """What an export writes as tokenizer.json: a BPE run's file as is, or the char vocabulary's."""
    if isinstance(tokenizer, CharTokenizer):
        return char_tokenizer_json(tokenizer.chars)
    return tokenizer.json


def end_of_text_id(tokenizer: Tokenizer) -> int | None:
    """The id of GPT-2's ``<|endoftext|>`` when the vocabulary has it (a GPT-2 tokenizer), else None."""
    if isinstance(tokenizer, CharTokenizer):
        return None
    return tokenizer.tokenizer.token_to_id(END_OF_TEXT)


def tokenizer_config(tokenizer: Tokenizer, block_size: int) -> dict[str, Any]:
    """tokenizer_config.json: the class that reads tokenizer.json as is, and no space clean-up on decode
    (it would turn our " ." into "." and break the round trip)."""
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                              "model_max_length": block_size, "add_prefix_space": False}
    if end_of_text_id(tokenizer) is not None:
        config.update(bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT)
    return config


def tokenizer_files(tokenizer: Tokenizer, block_size: int) -> dict[str, str]:
    """File name -> text of the tokenizer part of an export."""
    return {TOKENIZER_FILE: tokenizer_json(tokenizer),
            "tokenizer_config.json": json.dumps(tokenizer_config(tokenizer, block_size), indent=2) + "\n"}


def _bpe_from_vocab_and_merges(folder: Path) -> BpeTokenizer:
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    for part in (vocab, merges):
        try:
            check_bounded_file(part, "tokenizer file", "restore the folder's vocab.json and merges.txt")
        except OSError as exc:
            raise UserError(f"cannot read tokenizer file {part} ({exc.strerror or exc})",
                            "restore the folder's vocab.json and merges.txt") from None
    try:
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        detail = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise UserError(f"{vocab} + {merges} do not load as a BPE ({detail})",
                        "restore the folder's vocab.json and merges.txt") from None
    tokenizer = HfTokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return BpeTokenizer(tokenizer, source=str(vocab))


def read_folder_tokenizer(folder: str | Path) -> BpeTokenizer:
    """The tokenizer of a Hugging Face model folder: tokenizer.json, else vocab.json + merges.txt."""
    folder = Path(folder)
    if (folder / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer_file(folder / TOKENIZER_FILE)
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tokenizer = _bpe_from_vocab_and_merges(folder)
    else:
        raise UserError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt)",
                        "copy the model's tokenizer files into the folder (a Hugging Face snapshot has them)")
    check_vocab_fits(tokenizer.size, str(folder))
    return tokenizer


def check_vocab_fits(vocab_size: int, where: str) -> None:
    """The token cache stores ids as uint8/16/32: a vocabulary beyond uint32 cannot be cached."""
    if vocab_size > MAX_VOCAB:
        raise UserError(f"{where}: a vocabulary of {vocab_size:,} tokens is larger than the token cache's ids "
                        f"hold (uint32, {MAX_VOCAB:,})", "use a model with a smaller vocabulary")
