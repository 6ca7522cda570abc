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
import time
from pathlib import Path

import pytest
from helpers import TINY_MODEL

from tui_trainer.cli.console import DetachableStream

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


# (the bytes case, ~7 s, in the slow step: the non-ASCII one and the bytes-named data file below stay)
@pytest.mark.parametrize("name", ["rün", pytest.param(b"r\xffn", marks=pytest.mark.slow)],
                         ids=["non-ascii", "not-utf8-bytes"])
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


def test_a_line_is_fitted_to_a_backslashreplace_stream_with_look_alikes_and_question_marks():
    raw = io.BytesIO()
    stderr_like = io.TextIOWrapper(raw, encoding="ascii", errors="backslashreplace", write_through=True)
    DetachableStream(stderr_like).write("error: r\u00fcn \u2014 use \u2026 \u2192 x \udcff\n")
    assert raw.getvalue() == b"error: r?n - use ... -> x ?\n"


def test_error_lines_on_an_ascii_stderr_show_no_escapes(tmp_path):
    done = cli(["view", str(tmp_path / "n\u00f6where")], tmp_path, ASCII_ENV)  # stderr keeps "backslashreplace"
    err = done.stderr.decode("ascii")
    assert done.returncode == 2 and err.count("\n") == 1, err
    assert "\\u" not in err and "\\x" not in err and "n??where" in err and " - " in err  # (its two UTF-8 bytes)


def read_pty(master: int, until, seconds: float) -> bytes:
    import select

    out, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline and not until(out):
        if select.select([master], [], [], 0.1)[0]:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
    return out


def test_the_app_draws_its_boxes_on_a_terminal_whose_python_encoding_is_ascii(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    from test_view import recorded_run_dir

    run_dir = recorded_run_dir(tmp_path)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "tui_trainer", "view", str(run_dir)], stdin=slave, stdout=slave,
                               stderr=slave, env={**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color",
                                                  **ASCII_ENV}, close_fds=True)
    os.close(slave)
    try:
        box = "\u256d".encode()  # the panels' rounded corner, as UTF-8
        screen = read_pty(master, lambda out: box in out or b"\\u25" in out, 60)
        assert b"\\u25" not in screen and box in screen
        os.write(master, b"q")
        screen += read_pty(master, lambda out: process.poll() is not None, 20)
        assert process.wait(20) == 0 and b"\\u25" not in screen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(20)
        os.close(master)
