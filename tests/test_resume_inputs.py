"""What a resume is given and what it keeps true: flags validated before the run is judged,
config.json rewritten with the merged config, a changed data file explained, and a checkpoints
folder that cannot be written found at start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_MODEL

from tui_trainer.cli.main import main

TINY = [*TINY_MODEL, "--limit-train-batches", "2", "--limit-val-batches", "1"]


@pytest.fixture
def one_epoch_run(small_corpus, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    assert main(["--no-ui", "--data", str(small_corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]) == 0
    return run_dir


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "0"], "--epochs must be a positive number"),
    (["--patience", "-1"], "--patience must be 0 (off) or more"),
    (["--threads", "100000"], "--threads 100000"),
])
def test_a_bad_flag_with_resume_is_refused_as_bad_input_not_judged_against_the_run(flags, expected, one_epoch_run,
                                                                                  capsys):
    before = (one_epoch_run / "metrics.jsonl").read_bytes()
    assert main(["--no-ui", "--resume", str(one_epoch_run), *flags]) == 2
    assert expected in one_line_error(capsys)
    assert (one_epoch_run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("deleted", [False, True], ids=["kept", "deleted"])
def test_config_json_holds_the_merged_config_after_a_resume(deleted, one_epoch_run, capsys):
    if deleted:
        (one_epoch_run / "config.json").unlink()
    assert main(["--no-ui", "--resume", str(one_epoch_run), "--epochs", "3", "--patience", "7"]) == 0
    record = json.loads((one_epoch_run / "config.json").read_text(encoding="utf-8"))
    assert record["config"]["train"]["epochs"] == 3 and record["config"]["train"]["patience"] == 7
    assert record["config"]["model"]["n_embd"] == 32 and len(record["vocab"]) == record["config"]["model"]["vocab_size"]


def test_a_data_file_changed_since_the_run_started_says_what_changed_and_what_to_do(one_epoch_run, small_corpus,
                                                                                     capsys):
    with small_corpus.open("a", encoding="utf-8") as handle:
        handle.write("appended after the run started\n")
    before = (one_epoch_run / "metrics.jsonl").read_bytes()
    assert main(["--no-ui", "--resume", str(one_epoch_run), "--epochs", "2"]) == 2
    err = one_line_error(capsys)
    size = small_corpus.stat().st_size
    assert f"the data file {small_corpus} has changed since this run trained on it" in err
    assert f"{size:,} now" in err and "SHA-256" in err
    assert "put back the contents it had" in err and "another --run-dir" in err
    assert f"--data {small_corpus}" not in err  # no circular "resume with --data X" naming X itself
    assert (one_epoch_run / "metrics.jsonl").read_bytes() == before


def test_another_data_file_given_to_a_resume_names_the_one_it_trained_on(one_epoch_run, small_corpus, tmp_path,
                                                                         capsys):
    other = tmp_path / "other.txt"
    other.write_text(small_corpus.read_text(encoding="utf-8") + "x", encoding="utf-8")
    assert main(["--no-ui", "--resume", str(one_epoch_run), "--epochs", "2", "--data", str(other)]) == 2
    err = one_line_error(capsys)
    assert f"is not the one this run trained on ({small_corpus}" in err and "drop --data" in err


@pytest.fixture
def read_only_checkpoints(one_epoch_run):
    """checkpoints/ that cannot be written: a read-only tmpfs mounted on it as root, else chmod."""
    folder = one_epoch_run / "checkpoints"
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    saved = one_epoch_run / "saved"
    shutil.copytree(folder, saved)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        for item in saved.iterdir():
            shutil.copy2(item, folder / item.name)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_read_only_checkpoints_folder_is_found_before_training_not_at_the_first_save(read_only_checkpoints,
                                                                                        one_epoch_run, capsys):
    before = (one_epoch_run / "metrics.jsonl").read_bytes()
    assert main(["--no-ui", "--resume", str(one_epoch_run), "--epochs", "2"]) == 2
    err = one_line_error(capsys)
    assert f"checkpoints cannot be saved in {read_only_checkpoints}" in err
    assert (one_epoch_run / "metrics.jsonl").read_bytes() == before  # no step was trained for nothing
