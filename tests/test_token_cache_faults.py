"""The token cache as input, not truth: a header byte flipped (a character of the vocabulary, a
digit of ``n_train``) is a damaged cache, rebuilt with a note; a user's file in --cache-dir is
never cleaned up, whatever its name; a cache cut short under a running run ends it like any fatal
data error (a save, an `end` record, one line, exit 1), never with SIGBUS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_run_lock import train_command

from tui_trainer.data import text_source as ts
from tui_trainer.data import token_cache as tc
from tui_trainer.data import token_file as tf
from tui_trainer.errors import DataChanged
from tui_trainer.rundir.metrics import read_metrics


def prepare(path: Path, cache: Path, tokenizer="char", **kwargs) -> tc.TokenIds:
    return tc.prepare_ids(ts.find_source(path), tokenizer, cache, 0.1, **kwargs)


def header_of(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    room = int.from_bytes(raw[len(tf.MAGIC):len(tf.MAGIC) + 8], "little")
    return json.loads(raw[tf.FIXED:room]), room


def flip_in_header(path: Path, old: bytes, new: bytes) -> None:
    raw = bytearray(path.read_bytes())
    _, room = header_of(path)
    where = raw.index(old, tf.FIXED, room)
    raw[where:where + len(old)] = new
    path.write_bytes(bytes(raw))


def test_a_character_of_the_vocabulary_flipped_in_the_header_is_rebuilt_with_a_note(small_corpus, tmp_path):
    good = prepare(small_corpus, tmp_path / "cache")
    chars = good.tokenizer.chars
    absent = next(c for c in "ZYXWVUQK" if c not in chars)  # one byte flipped: "A" -> a letter it lacks
    flip_in_header(good.cache_path, b'"A"', f'"{absent}"'.encode())
    assert tc.read_cache(good.cache_path) is None  # the checksum covers the header
    again = prepare(small_corpus, tmp_path / "cache")
    assert again.built and again.tokenizer.chars == chars
    assert len(again.notes) == 1 and "damaged" in again.notes[0] and "rebuilt" in again.notes[0]
    assert prepare(small_corpus, tmp_path / "cache").notes == ()  # once rebuilt, it is trusted again


def test_a_digit_of_n_train_flipped_in_a_bpe_cache_does_not_move_the_split(small_corpus, tmp_path):
    good = prepare(small_corpus, tmp_path / "cache", "bpe", vocab_size=300)
    header, _ = header_of(good.cache_path)
    digits = str(header["n_train"]).encode()
    flip_in_header(good.cache_path, b'"n_train": ' + digits, b'"n_train": ' + digits[:-1] + (b"1" if digits[-1:] != b"1" else b"2"))
    again = prepare(small_corpus, tmp_path / "cache", "bpe", vocab_size=300)
    assert again.built and again.n_train == good.n_train and again.notes


def test_padding_magic_and_room_are_covered_too(small_corpus, tmp_path):
    good = prepare(small_corpus, tmp_path / "cache")
    _, room = header_of(good.cache_path)
    for where in (3, len(tf.MAGIC) + 1, room - 1):  # the magic, the room, the padding after the JSON
        raw = bytearray(good.cache_path.read_bytes())
        raw[where] ^= 0x01
        damaged = tmp_path / f"damaged-{where}.tokens"
        damaged.write_bytes(bytes(raw))
        assert tf.read_cache(damaged) is None


def test_files_in_the_cache_dir_that_are_not_provably_ours_are_never_removed(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    theirs = {
        ".thesis.md.tmp-4000000": b"precious",
        f".thesis.md.tmp-{dead.pid}": b"precious",
        f".probe-{os.getpid()}": b"precious",
        f"{tf.TEMP_PREFIX}{dead.pid}-notes": b"my own notes, named like yours",
        f"{tf.TEMP_PREFIX}{dead.pid}-json": b'{"mine": true}',
    }
    for name, content in theirs.items():
        (cache / name).write_bytes(content)
    ours = cache / f"{tf.TEMP_PREFIX}{dead.pid}-abandoned"
    ours.write_bytes(tf.MAGIC + b"\0" * 100)  # a writer killed mid-write (kill -9)
    ours_json = cache / f"{tf.TEMP_PREFIX}{dead.pid}-record"
    ours_json.write_bytes(tf.JSON_MARK + b'"source fingerprint", "st')
    prepare(small_corpus, cache)
    for name, content in theirs.items():
        assert (cache / name).read_bytes() == content, name
    assert not ours.exists() and not ours_json.exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(tf.TEMP_PREFIX) and p.name not in theirs]


def test_a_live_writers_temp_file_is_left_alone(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    live = subprocess.Popen(["sleep", "30"])
    try:
        busy = cache / f"{tf.TEMP_PREFIX}{live.pid}-writing"
        busy.write_bytes(tf.MAGIC)
        prepare(small_corpus, cache)
        assert busy.exists()
    finally:
        live.kill()
        live.wait()


def test_reading_ids_gives_what_numpy_gives_and_a_cut_file_raises_data_changed(small_corpus, tmp_path):
    prepared = prepare(small_corpus, tmp_path / "cache")
    ids = prepared.ids
    whole = np.asarray(ids)
    assert len(whole) == len(ids) and whole.dtype == np.uint8
    view = ids[100:5000]
    starts = np.array([0, 7, 4000, 32])[:, None] + np.arange(33)
    assert np.array_equal(view[starts], whole[100:5000][starts])
    assert np.array_equal(view[np.array([-1, 3])], whole[100:5000][[-1, 3]]) and view[-1] == whole[4999]
    assert list(ids[:50]) == whole[:50].tolist()
    with pytest.raises(IndexError):
        view[np.array([4900])]
    os.truncate(prepared.cache_path, prepared.cache_path.stat().st_size - 10_000)
    assert np.array_equal(view[:100][np.arange(10)], whole[100:110])  # what is still there reads
    with pytest.raises(DataChanged, match="cut short"):
        ids[len(ids) - 40:][np.arange(30)]


def test_a_cache_cut_short_under_a_running_run_saves_and_ends_with_one_line(small_corpus, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    process = subprocess.Popen(train_command(small_corpus, run_dir, "--epochs", "100000", "--cache-dir", str(cache),
                                             "--limit-train-batches", "40"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not [r for r in read_metrics(run_dir) if r["type"] == "step"] if (run_dir / "metrics.jsonl").exists() \
                else True:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no step in time"
            time.sleep(0.1)
        (cached,) = cache.glob("*.tokens")
        _, room = header_of(cached)
        os.truncate(cached, room + 64)  # the ids all but gone, under the run
        returncode = process.wait(60)
        stderr = process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    lines = stderr.strip().splitlines()
    assert returncode == 1, (returncode, stderr)  # not -7 (SIGBUS), not 135
    assert len(lines) == 1 and lines[0].startswith("error: the token cache") and "cut short" in lines[0], lines
    assert f"--resume {run_dir}" in lines[0]
    end = read_metrics(run_dir)[-1]
    assert end["type"] == "end" and end["reason"] == "error" and "cut short" in end["message"]
    assert (run_dir / "checkpoints" / "latest.pt").is_file()
    steps = [r["step"] for r in read_metrics(run_dir) if r["type"] == "step"]
    assert f"step {steps[-1]} is saved" in lines[0]
    resumed = subprocess.run([sys.executable, "-m", "tui_trainer", "train", "--no-ui", "--resume", str(run_dir),
                              "--epochs", "1"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "was damaged" in resumed.stdout and "rebuilt" in resumed.stdout  # the resume rebuilds it, and says so


def test_a_fifo_where_the_cache_should_be_is_not_opened(tmp_path):
    fifo = tmp_path / "x.tokens"
    os.mkfifo(fifo)
    assert tf.read_cache(fifo) is None  # at once: opening it would wait for a writer forever


def test_a_cache_of_the_older_format_is_rebuilt_and_called_older_not_damaged(small_corpus, tmp_path):
    good = prepare(small_corpus, tmp_path / "cache")
    good.cache_path.write_bytes(b"TUITOK1\n" + good.cache_path.read_bytes()[8:])
    again = prepare(small_corpus, tmp_path / "cache")
    assert again.built and again.notes == (f"the token cache {good.cache_path} is of an older format: rebuilt",)


def test_a_cache_rewritten_in_place_with_ids_outside_the_vocabulary_saves_and_ends_with_one_line(small_corpus,
                                                                                                 tmp_path):
    """Same length, other bytes: ids the embedding lacks were an IndexError mid-step (a traceback,
    no save); they are DataChanged, as a cut-short cache is."""
    from dataclasses import replace

    from helpers import ScriptedSink, tiny_config, train, with_limits

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    cfg = with_limits(tiny_config(small_corpus, run_dir, epochs=1), 6, 2)
    cfg = cfg.replace(data=replace(cfg.data, cache_dir=str(cache)))

    def rewrite(trainer) -> None:
        (cached,) = cache.glob("*.tokens")
        _, room = header_of(cached)
        with open(cached, "r+b") as file:
            file.seek(room)
            file.write(b"\xff" * (cached.stat().st_size - room))

    _, _, end = train(cfg, ScriptedSink({2: rewrite}), check=False)
    assert end.reason == "error" and "outside the vocabulary" in end.message, end.message
    assert "step 2 is saved" in end.message and (run_dir / "checkpoints" / "latest.pt").is_file()
    assert not (run_dir / "error.log").exists()
