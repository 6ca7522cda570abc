"""Your own corpus from the command line: a folder, BPE, the run's tokenizer, resume checks, bad input."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import TINY_MODEL

from tui_trainer.bounded_read import MAX_JSON_BYTES
from tui_trainer.cli.main import main
from tui_trainer.data.tokenizer import TOKENIZER_FILE, load_tokenizer, load_tokenizer_file, train_bpe
from tui_trainer.rundir import checkpoints as ckpt

TINY = ["--no-ui", *TINY_MODEL, "--limit-train-batches", "3", "--limit-val-batches", "2", "--epochs", "1"]


def one_error_line(args: list[str], capsys) -> str:
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_a_bpe_run_keeps_its_tokenizer_in_the_run_dir_and_it_decodes(small_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--data", str(small_corpus), "--run-dir", str(run_dir), "--tokenizer", "bpe",
                 "--vocab-size", "300", *TINY]) == 0
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["tokenizer"]["kind"] == "bpe" and config["tokenizer"]["vocab_size"] == 300
    assert config["config"]["model"]["vocab_size"] == 300 and config["config"]["data"]["tokenizer"] == "bpe"
    assert (run_dir / TOKENIZER_FILE).is_file()
    tokenizer = load_tokenizer(run_dir)
    assert tokenizer.fingerprint == config["tokenizer"]["fingerprint"]
    text = small_corpus.read_text(encoding="utf-8")[:500]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir))
    assert state["tokenizer"]["fingerprint"] == config["tokenizer"]["fingerprint"]


def test_a_char_run_records_its_tokenizer_and_loads_it_back(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--data", str(small_corpus), "--run-dir", str(run_dir), *TINY]) == 0
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["tokenizer"]["kind"] == "char" and not (run_dir / TOKENIZER_FILE).exists()
    assert load_tokenizer(run_dir).chars == tuple(sorted(set(small_corpus.read_text(encoding="utf-8"))))


def test_a_folder_of_text_files_trains(small_corpus, tmp_path):
    folder = tmp_path / "texts"
    (folder / "more").mkdir(parents=True)
    text = small_corpus.read_text(encoding="utf-8")
    (folder / "a.txt").write_text(text[:10_000], encoding="utf-8")
    (folder / "more" / "b.txt").write_text(text[10_000:], encoding="utf-8")
    run_dir = tmp_path / "run"
    assert main(["--data", str(folder), "--run-dir", str(run_dir), *TINY]) == 0
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["data_path"] == str(folder.resolve())


def test_a_user_tokenizer_file_is_used(small_corpus, tmp_path):
    mine = tmp_path / "mine.json"
    train_bpe(iter([small_corpus.read_text(encoding="utf-8")]), 320).tokenizer.save(str(mine))
    run_dir = tmp_path / "run"
    assert main(["--data", str(small_corpus), "--run-dir", str(run_dir), "--tokenizer", str(mine), *TINY]) == 0
    assert json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["tokenizer"]["vocab_size"] == 320
    assert load_tokenizer(run_dir).fingerprint == load_tokenizer_file(mine).fingerprint


@pytest.fixture
def bpe_run(small_corpus, tmp_path) -> Path:
    run_dir = tmp_path / "bpe-run"
    assert main(["--data", str(small_corpus), "--run-dir", str(run_dir), "--tokenizer", "bpe",
                 "--vocab-size", "300", *TINY]) == 0
    return run_dir


def test_resume_of_a_bpe_run_uses_its_own_tokenizer(bpe_run, small_corpus, capsys):
    capsys.readouterr()
    assert main(["--no-ui", "--resume", str(bpe_run), "--data", str(small_corpus), "--epochs", "2"]) == 0
    assert "end reason=completed epochs=2" in capsys.readouterr().out


def test_resume_refuses_another_tokenizer(bpe_run, small_corpus, capsys):
    message = one_error_line(["--no-ui", "--resume", str(bpe_run), "--data", str(small_corpus), "--epochs", "2",
                              "--tokenizer", "char"], capsys)
    assert "--tokenizer char contradicts the checkpoint (bpe)" in message


def test_resume_refuses_a_replaced_tokenizer_file(bpe_run, small_corpus, capsys):
    other = train_bpe(iter([small_corpus.read_text(encoding="utf-8")[:5000]]), 280)
    other.save(bpe_run)
    message = one_error_line(["--no-ui", "--resume", str(bpe_run), "--data", str(small_corpus), "--epochs", "2"],
                             capsys)
    assert "is not the tokenizer this run was trained with" in message


@pytest.mark.parametrize("flags, expected", [
    (["--vocab-size", "4096"], "--vocab-size is only for --tokenizer bpe"),
    (["--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size must be between 256"),
    (["--tokenizer", "bpe", "--vocab-size", str(2 ** 32 + 1)], "--vocab-size must be between 256"),
    (["--tokenizer", "bpe", "--vocab-size", "1000000000"], "and 1,048,576, got 1,000,000,000"),  # (tokenizers: ~59 GB)
    (["--tokenizer", "bpe", "--vocab-size", str(2 ** 20 + 1)], "--vocab-size must be between 256"),
    (["--tokenizer", "missing.json"], "tokenizer file missing.json does not exist"),
    (["--tokenizer", "BROKEN"], "does not load"),
    (["--tokenizer", "WORDS"], "cannot encode this text (WordLevel error: Missing [UNK] token"),
    (["--tokenizer", "/dev/zero"], "tokenizer file /dev/zero is not a regular file"),  # (was: read until OOM)
    (["--tokenizer", "FIFO"], "is not a regular file"),  # (must not block either)
    (["--tokenizer", "HUGE"], "bytes: more than the 268,435,456 such a file can be"),
])
def test_bad_tokenizer_input_is_one_line_and_exit_2(flags, expected, small_corpus, tmp_path, capsys, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers

    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.json").write_text('{"version": "1.0", "model": 7}', encoding="utf-8")
    words = Tokenizer(models.WordLevel({"the": 0, "and": 1, "of": 2}))  # no [UNK]: a word it lacks cannot be encoded
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.save(str(tmp_path / "words.json"))
    os.mkfifo(tmp_path / "fifo")
    with open(tmp_path / "huge.json", "wb") as huge:  # (sparse: no disk used)
        huge.truncate(MAX_JSON_BYTES + 1)
    named = {"BROKEN": "broken.json", "WORDS": "words.json", "FIFO": "fifo", "HUGE": "huge.json"}
    flags = [str(tmp_path / named[f]) if f in named else f for f in flags]
    run_dir = tmp_path / "run"
    message = one_error_line(["--data", str(small_corpus), "--run-dir", str(run_dir), *flags, *TINY], capsys)
    assert expected in message
    assert not run_dir.exists()


def test_the_largest_bpe_vocabulary_is_accepted_by_the_checks(small_corpus):
    from tui_trainer.config import DataConfig, RunConfig
    from tui_trainer.config_checks import MAX_BPE_VOCAB, validate

    cfg = RunConfig(data=DataConfig(path=str(small_corpus), tokenizer="bpe", vocab_size=MAX_BPE_VOCAB))
    assert validate(cfg).data.vocab_size == 2 ** 20


def test_bad_data_folders_are_one_line_and_leave_nothing(tmp_path, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    run_dir = tmp_path / "run"
    assert "holds no .txt files" in one_error_line(["--data", str(folder), "--run-dir", str(run_dir), *TINY], capsys)
    (folder / "a.txt").write_text("some text\n" * 500, encoding="utf-8")
    (folder / "b.txt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    message = one_error_line(["--data", str(folder), "--run-dir", str(run_dir), *TINY], capsys)
    assert "looks binary" in message and "b.txt" in message
    assert not run_dir.exists()


def test_a_stop_while_the_data_is_prepared_leaves_no_run_and_no_cache(small_corpus, tmp_path):
    from helpers import tiny_config

    from tui_trainer.control import Control
    from tui_trainer.data.text_source import PreparationCancelled
    from tui_trainer.engine.loop import Trainer

    control = Control()
    cfg = tiny_config(small_corpus, tmp_path / "run")
    cfg = cfg.replace(data=replace(cfg.data, cache_dir=str(tmp_path / "cache")))

    def progress(p) -> None:
        if p.phase == "tokenizing":
            control.stop("interrupted", 2)  # what Ctrl-C does (signals.SignalStopper)

    with pytest.raises(PreparationCancelled) as stopped:
        Trainer(cfg, None, control, data_progress=progress)
    assert stopped.value.args == (2,)
    assert not (tmp_path / "run").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("source-")] == []


def test_toml_takes_the_bpe_vocab_size_under_data_but_never_the_models(tmp_path):
    from tui_trainer.cli.config_file import load_toml
    from tui_trainer.errors import UserError

    good = tmp_path / "good.toml"
    good.write_text('[data]\ntokenizer = "bpe"\nvocab_size = 8192\ncache_dir = "cache"\n', encoding="utf-8")
    assert load_toml(str(good))["data"] == {"tokenizer": "bpe", "vocab_size": 8192, "cache_dir": "cache"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nvocab_size = 8192\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"vocab_size in \[model\]"):
        load_toml(str(bad))


def test_a_bpe_run_never_overwrites_a_tokenizer_json_that_is_not_its_own(small_corpus, tmp_path, capsys):
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / TOKENIZER_FILE).write_text('{"mine": true}', encoding="utf-8")
    message = one_error_line(["--data", str(small_corpus), "--run-dir", str(folder), "--tokenizer", "bpe",
                              "--vocab-size", "300", *TINY], capsys)
    assert "not a tui-trainer run's" in message
    assert (folder / TOKENIZER_FILE).read_text(encoding="utf-8") == '{"mine": true}'
    assert sorted(p.name for p in folder.iterdir()) == [TOKENIZER_FILE]


def test_a_bpe_run_dir_that_holds_a_run_says_so_as_a_char_runs_does(bpe_run, small_corpus, capsys):
    """The same command again in a BPE run's dir: its own tokenizer.json is not a foreign file
    (a cold trial read "not a tui-trainer run's" and thought the run was damaged)."""
    message = one_error_line(["--data", str(small_corpus), "--run-dir", str(bpe_run), "--tokenizer", "bpe",
                              "--vocab-size", "300", *TINY], capsys)
    assert "already holds a run" in message and f"--resume {bpe_run}" in message and "--overwrite" in message
    assert "not a tui-trainer run's" not in message
