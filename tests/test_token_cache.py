"""Streamed tokenization and the token cache: chunk boundaries, directories, reuse, corruption, stops."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from tui_trainer.config import DataConfig
from tui_trainer.data import text_source as ts
from tui_trainer.data import token_cache as tc
from tui_trainer.data.dataset import load_corpus
from tui_trainer.data.token_file import TokenFile
from tui_trainer.data.tokenizer import CharTokenizer, train_bpe
from tui_trainer.errors import UserError

MIXED = "naïve café — 東京 😀 Ünïcödé\n"  # 1-, 2-, 3- and 4-byte characters


@pytest.fixture
def mixed_text(shakespeare_text: str) -> str:
    return "".join(shakespeare_text[i:i + 700] + MIXED for i in range(0, 14_000, 700))


def prepare(path: Path, cache: Path, tokenizer="char", **kwargs) -> tc.TokenIds:
    return tc.prepare_ids(ts.find_source(path), tokenizer, cache, 0.1, **kwargs)


@pytest.mark.parametrize("chunk_bytes", [4, 5, 7, 13, 4096])
def test_char_chunks_never_split_a_character_or_change_ids(mixed_text, tmp_path, chunk_bytes):
    path = tmp_path / "mixed.txt"
    path.write_text(mixed_text, encoding="utf-8")
    prepared = prepare(path, tmp_path / "cache", chunk_bytes=chunk_bytes)
    whole = CharTokenizer.from_text(mixed_text)
    assert prepared.tokenizer == whole
    assert np.array_equal(np.asarray(prepared.ids), whole.encode(mixed_text).numpy())
    assert prepared.ids.dtype == np.uint8  # the smallest type that holds the vocabulary


@pytest.mark.parametrize("chunk_bytes, piece_chars", [(7, 5), (300, 40), (4096, 1000)])
def test_bpe_pieces_give_the_ids_of_encoding_the_whole_text(mixed_text, tmp_path, chunk_bytes, piece_chars):
    path = tmp_path / "mixed.txt"
    path.write_text(mixed_text, encoding="utf-8")
    prepared = prepare(path, tmp_path / "cache", "bpe", vocab_size=400, chunk_bytes=chunk_bytes,
                       piece_chars=piece_chars)
    raw = mixed_text.encode("utf-8")
    cut = len(raw) - round(len(raw) * 0.1)
    while raw[cut] & 0xC0 == 0x80:
        cut += 1
    train, val = raw[:cut].decode(), raw[cut:].decode()
    tokenizer = prepared.tokenizer
    expected = np.concatenate([tokenizer.encode(train).numpy(), tokenizer.encode(val).numpy()])
    assert np.array_equal(np.asarray(prepared.ids), expected)
    assert prepared.n_train == len(tokenizer.encode(train))
    assert prepared.ids.dtype == np.uint16 and tokenizer.size == 400


def test_bpe_round_trip_gives_back_the_corpus(shakespeare_text, tmp_path):
    text = shakespeare_text[:200_000] + MIXED * 20
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    prepared = prepare(path, tmp_path / "cache", "bpe", vocab_size=1000)
    assert prepared.tokenizer.decode(prepared.ids) == text
    assert len(prepared.ids) < len(text) / 2  # it learnt merges, not only bytes


def test_bpe_is_learnt_from_the_training_text_only(shakespeare_text, tmp_path):
    secret = "zyzzyvaquux "
    text = shakespeare_text[:45_000] + secret * 400  # the secret word is in the last 10% only
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    prepared = prepare(path, tmp_path / "cache", "bpe", vocab_size=600)
    assert not any("zyzz" in token for token in prepared.tokenizer.tokenizer.get_vocab())
    learnt_on_all = train_bpe(iter([text]), 600)
    assert any("zyzz" in token for token in learnt_on_all.tokenizer.get_vocab())  # the check can fail


def test_directory_reads_every_txt_in_sorted_path_order_joined_with_newlines(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "b.txt").write_text("second file", encoding="utf-8")
    (corpus / "a.txt").write_text("first file\n", encoding="utf-8")
    (corpus / "sub" / "c.txt").write_text("third, in a folder", encoding="utf-8")
    (corpus / "notes.md").write_text("not text for training", encoding="utf-8")
    source = ts.find_source(corpus)
    assert [p.relative_to(corpus).as_posix() for p in source.files] == ["a.txt", "b.txt", "sub/c.txt"]
    prepared = tc.prepare_ids(source, "char", tmp_path / "cache", 0.1, chunk_bytes=5)
    joined = "first file\n\nsecond file\nthird, in a folder"
    assert prepared.tokenizer.decode(prepared.ids) == joined
    assert prepared.data_fingerprint == hashlib.sha256(joined.encode()).hexdigest()


def test_a_bom_is_not_a_token_and_a_single_file_keeps_its_sha256(tmp_path):
    path = tmp_path / "bom.txt"
    raw = "\ufeffhello there, general\n".encode("utf-8")
    path.write_bytes(raw)
    prepared = prepare(path, tmp_path / "cache", chunk_bytes=4)
    assert "\ufeff" not in prepared.tokenizer.chars
    assert prepared.tokenizer.decode(prepared.ids) == "hello there, general\n"
    assert prepared.data_fingerprint == hashlib.sha256(raw).hexdigest()  # what runs have always recorded


def test_a_second_load_reuses_the_cache_without_tokenizing(small_corpus, tmp_path):
    phases: list[list[str]] = [[], []]
    first = prepare(small_corpus, tmp_path / "cache", progress=lambda p: phases[0].append(p.phase))
    second = prepare(small_corpus, tmp_path / "cache", progress=lambda p: phases[1].append(p.phase))
    assert first.built and "tokenizing" in phases[0]
    assert not second.built and "tokenizing" not in phases[1] and "checking" not in phases[1]
    assert np.array_equal(first.ids, second.ids) and isinstance(second.ids, TokenFile)


def test_a_changed_file_or_tokenizer_gets_its_own_cache(small_corpus, tmp_path):
    char = prepare(small_corpus, tmp_path / "cache")
    bpe = prepare(small_corpus, tmp_path / "cache", "bpe", vocab_size=300)
    assert bpe.built and bpe.cache_path != char.cache_path
    small_corpus.write_text(small_corpus.read_text() + "more", encoding="utf-8")
    changed = prepare(small_corpus, tmp_path / "cache")
    assert changed.built and changed.cache_path != char.cache_path and len(changed.ids) == len(char.ids) + 4


@pytest.mark.parametrize("damage", ["truncate", "flip an id", "flip the header", "empty"])
def test_a_corrupt_cache_is_rebuilt_never_trusted(small_corpus, tmp_path, damage):
    good = prepare(small_corpus, tmp_path / "cache")
    expected = np.array(good.ids)
    path = good.cache_path
    raw = bytearray(path.read_bytes())
    del good
    if damage == "truncate":
        raw = raw[:-100]
    elif damage == "flip an id":
        raw[-500] ^= 0x01
    elif damage == "flip the header":
        raw[20] ^= 0x40
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    assert tc.read_cache(path) is None
    again = prepare(small_corpus, tmp_path / "cache")
    assert again.built and np.array_equal(np.asarray(again.ids), expected)
    assert tc.read_cache(path) is not None


def test_a_stop_while_tokenizing_leaves_no_cache_file(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    seen: list[str] = []

    def cancel() -> bool:
        return "tokenizing" in seen

    with pytest.raises(ts.PreparationCancelled):
        prepare(small_corpus, cache, progress=lambda p: seen.append(p.phase), cancel=cancel, chunk_bytes=1000)
    assert list(cache.iterdir()) == []  # no cache, no temp file
    assert prepare(small_corpus, cache).built


def test_the_default_cache_dir_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tc.default_cache_dir() == tmp_path / "xdg" / "tui-trainer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tc.default_cache_dir() == Path.home() / ".cache" / "tui-trainer"


def test_load_corpus_splits_char_tokens_90_10_and_bpe_on_the_text(small_corpus, tmp_path):
    char = load_corpus(DataConfig(path=str(small_corpus), cache_dir=str(tmp_path)), block_size=16)
    assert len(char.val_tokens) == round(20_000 * 0.1) and len(char.train_tokens) == 18_000
    bpe = load_corpus(DataConfig(path=str(small_corpus), cache_dir=str(tmp_path), tokenizer="bpe",
                                 vocab_size=300), block_size=16)
    text = small_corpus.read_text(encoding="utf-8")
    assert bpe.vocab.decode(bpe.train_tokens) == text[:18_000]  # ASCII: 90% of the bytes


# -- bad input: one line, naming the problem -----------------------------------------------------

def error_of(path: Path, tmp_path: Path, tokenizer="char") -> str:
    with pytest.raises(UserError) as caught:
        prepare(path, tmp_path / "cache", tokenizer, vocab_size=300)
    return caught.value.one_line()


def test_a_directory_without_txt_files_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.md").write_text("text")
    assert "holds no .txt files" in error_of(tmp_path / "data", tmp_path)


@pytest.mark.parametrize("in_directory", [False, True])
def test_nul_bytes_anywhere_mean_a_binary_file_named_in_the_error(small_corpus, tmp_path, in_directory):
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.txt").write_bytes(small_corpus.read_bytes())
    bad = data / "late-nul.txt"
    bad.write_bytes(b"text " * 20_000 + b"\x00" + b"more")  # past the first 64 KiB
    message = error_of(data if in_directory else bad, tmp_path)
    assert "looks binary" in message and str(bad) in message and "100000" in message
    assert not list((tmp_path / "cache").glob("*.tokens"))


def test_invalid_utf8_in_a_directory_names_the_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("fine text\n", encoding="utf-8")
    (data / "b.txt").write_bytes("café".encode("latin-1"))
    message = error_of(data, tmp_path)
    assert "not valid UTF-8" in message and str(data / "b.txt") in message


@pytest.mark.parametrize("content, words", [(b"", "is empty"), (b"\n\n  \n\t\n", "holds no text (only whitespace)"),
                                            (b"\xef\xbb\xbf\n", "holds no text (only whitespace)")])
def test_empty_and_whitespace_only_files_are_told_apart(tmp_path, content, words):
    path = tmp_path / "blank.txt"
    path.write_bytes(content)
    assert words in error_of(path, tmp_path)


def test_a_one_character_vocabulary_is_refused(tmp_path):
    path = tmp_path / "aaaa.txt"
    path.write_text("a" * 5000, encoding="utf-8")
    assert "nothing to learn" in error_of(path, tmp_path)


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root reads any file")
def test_an_unreadable_file_in_a_directory_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("text\n")
    locked = data / "b.txt"
    locked.write_text("secret\n")
    locked.chmod(0)
    assert str(locked) in error_of(data, tmp_path)


def test_the_progress_line_leaves_a_line_only_for_slow_phases_in_a_log():
    import io

    from tui_trainer.data.progress import DataProgressLine

    out = io.StringIO()
    line = DataProgressLine(out, live=False)
    line(ts.Progress("fingerprint", 0, 10_000_000, 0.0))
    line(ts.Progress("fingerprint", 10_000_000, 10_000_000, 0.2))  # quick: nothing
    line(ts.Progress("tokenizing", 5_000_000, 10_000_000, 1.0))
    line(ts.Progress("tokenizing", 10_000_000, 10_000_000, 2.0))
    assert out.getvalue() == "data: tokenizing 100% of 10.0 MB (5.0 MB/s, 2.0 s)\n"


def test_the_fingerprint_is_remembered_until_a_file_changes_even_with_its_old_mtime(small_corpus, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(tc, "SETTLED_SECONDS", 0)
    first = prepare(small_corpus, tmp_path / "cache")
    phases: list[str] = []
    again = prepare(small_corpus, tmp_path / "cache", progress=lambda p: phases.append(p.phase))
    assert "fingerprint" not in phases and again.data_fingerprint == first.data_fingerprint
    stat = small_corpus.stat()
    text = small_corpus.read_text(encoding="utf-8")
    small_corpus.write_text(text.replace("the", "teh"), encoding="utf-8")  # same size
    os.utime(small_corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    changed = prepare(small_corpus, tmp_path / "cache")
    assert changed.built and changed.data_fingerprint == hashlib.sha256(small_corpus.read_bytes()).hexdigest()
