"""Output streams that are not UTF-8, and names that are not valid in the file system's encoding.

A C locale without UTF-8 coercion, or PYTHONIOENCODING=ascii, gives stdout an ASCII encoding: a
run whose path or messages hold a non-ASCII character must still print every line (with "?" for
what ASCII cannot hold) and write its files as UTF-8.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL

from tui_trainer.cli.main import DetachableStream

REPO = Path(__file__).resolve().parent.parent
TINY = [*TINY_MODEL, "--limit-train-batches", "2", "--limit-val-batches", "1", "--epochs", "1"]
ASCII_ENV = {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}


def test_a_character_the_stream_cannot_encode_is_replaced_not_taken_for_a_dead_terminal():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict", write_through=True)
    out = DetachableStream(stream)
    out.write("run rün \udcff done\n")
    out.write("next line\n")
    out.flush()
    assert not out.detached
    assert raw.getvalue() == b"run r?n ? done\nnext line\n"


def cli(args: list, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui_trainer.cli.main", *args], cwd=cwd, capture_output=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.parametrize("name", ["rün", b"r\xffn"], ids=["non-ascii", "not-utf8-bytes"])
def test_a_run_on_an_ascii_terminal_with_such_a_run_dir_prints_every_line_and_writes_utf8(name, small_corpus,
                                                                                          tmp_path):
    done = cli([b"--no-ui", b"--data", os.fsencode(small_corpus), b"--run-dir", os.fsencode(name) if isinstance(name, str)
                else name, *(a.encode() for a in TINY)], tmp_path, ASCII_ENV)
    out = done.stdout.decode("ascii")  # nothing but ASCII reaches an ASCII stream
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert out.startswith("run r?") and "end reason=completed" in out
    run_dir = tmp_path / os.fsdecode(name)
    record = json.loads((run_dir / "config.json").read_bytes().decode("utf-8"))
    assert os.fsencode(record["config"]["run_dir"]) in (os.fsencode(name), name)  # the exact bytes come back
    resumed = cli([b"--no-ui", b"--resume", os.fsencode(run_dir), b"--epochs", b"2"], tmp_path, ASCII_ENV)
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    assert b"end reason=completed epochs=2" in resumed.stdout


def test_bad_input_naming_a_non_ascii_path_is_one_line_on_an_ascii_stderr(tmp_path):
    done = cli(["--no-ui", "--data", "dätä.txt", "--run-dir", "r"], tmp_path,
               {**ASCII_ENV, "PYTHONIOENCODING": "ascii:strict"})
    lines = done.stderr.decode("ascii").strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "d" in lines[0]
    assert not (tmp_path / "r").exists()


def test_a_data_file_whose_name_is_not_valid_utf8_trains_and_resumes(small_corpus, tmp_path):
    name = b"corpus-\xff.txt"
    (tmp_path / os.fsdecode(name)).write_bytes(small_corpus.read_bytes())
    done = cli([b"--no-ui", b"--data", name, b"--run-dir", b"run", *(a.encode() for a in TINY)], tmp_path, {})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    resumed = cli([b"--no-ui", b"--resume", b"run", b"--epochs", b"2"], tmp_path, {})
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    record = json.loads((tmp_path / "run" / "config.json").read_bytes().decode("utf-8"))
    assert os.fsencode(record["data_path"]).endswith(name)
