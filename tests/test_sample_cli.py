"""`tui-trainer sample RUN_DIR`: the text of a trained run, streamed or piped; bad input exits 2."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CORPUS, TINY_MODEL

from tui_trainer.cli.main import main

TINY = [*TINY_MODEL, "--limit-train-batches", "6", "--limit-val-batches", "2"]


def sample(*argv: str) -> int:
    """The exit code, whether main returns it or argparse raises SystemExit with it."""
    try:
        return main(["sample", *argv])
    except SystemExit as exited:
        return exited.code


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One short real run (1 epoch of a tiny model), shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("sample")
    corpus = root / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    run_dir = root / "run"
    assert main(["--no-ui", "--data", str(corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]) == 0
    return run_dir


def test_sample_prints_the_prompt_then_the_new_text_and_a_seed_fixes_it(trained_run, capsys):
    assert sample(str(trained_run), "--prompt", "ROMEO:", "--tokens", "40", "--seed", "3") == 0
    first = capsys.readouterr()
    assert first.out.startswith("ROMEO:") and first.err == ""
    assert len(first.out.rstrip("\n")) >= len("ROMEO:") + 40 - first.out.count("\n")
    assert sample(str(trained_run), "--prompt", "ROMEO:", "--tokens", "40", "--seed", "3") == 0
    assert capsys.readouterr().out == first.out
    assert sample(str(trained_run), "--prompt", "ROMEO:", "--tokens", "40", "--seed", "4") == 0
    assert capsys.readouterr().out != first.out


def test_greedy_text_is_the_same_with_and_without_the_kv_cache(trained_run, capsys):
    # 100 tokens with a context of 32: the window slides several times.
    assert sample(str(trained_run), "--tokens", "100", "--temperature", "0") == 0
    cached = capsys.readouterr().out
    assert sample(str(trained_run), "--tokens", "100", "--temperature", "0", "--no-kv-cache") == 0
    assert capsys.readouterr().out == cached


def test_without_best_it_samples_latest_and_says_so_on_stderr(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / "checkpoints" / "best.pt").unlink()
    assert sample(str(run_dir), "--tokens", "10") == 0
    captured = capsys.readouterr()
    assert "latest.pt" in captured.err and captured.err.count("\n") == 1
    assert captured.out.startswith("\n")


class Terminal(io.StringIO):
    """A stdout that says it is a terminal and counts its flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        self.flushes += 1


def test_on_a_terminal_the_text_is_streamed_as_it_is_generated(trained_run, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert sample(str(trained_run), "--tokens", "30", "--seed", "1") == 0
    monkeypatch.undo()
    assert terminal.flushes >= 30  # a flush per piece of text
    assert sample(str(trained_run), "--tokens", "30", "--seed", "1") == 0
    assert capsys.readouterr().out == terminal.getvalue()  # the same text as when piped


@pytest.mark.parametrize("args, words", [
    (["--prompt", "caf\u00e9~"], ["'~'", "'\u00e9'", "vocabulary"]),
    (["--prompt", ""], ["--prompt", "empty"]),
    (["--temperature", "-0.5"], ["--temperature", "-0.5"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--tokens", "0"], ["--tokens"]),
    (["--tokens", "99999999999999999999999"], ["--tokens", "1,000,000"]),
    (["--tokens", "1000001"], ["--tokens", "1,000,000"]),
    (["--temperature", "inf"], ["--temperature", "finite"]),
    (["--temperature", "nan"], ["--temperature"]),
    (["--checkpoint", "newest"], ["--checkpoint"]),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(args, words, trained_run, capsys):
    assert sample(str(trained_run), *args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error:")
    for word in words:
        assert word in captured.err


def test_a_run_dir_without_a_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for run_dir in (tmp_path / "empty", tmp_path / "missing"):
        assert sample(str(run_dir)) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and str(run_dir) in captured.err


def test_the_console_script_pipes_plain_text(trained_run):
    script = Path(sys.executable).with_name("tui-trainer")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tui_trainer"]
    done = subprocess.run([*command, "sample", str(trained_run), "--tokens", "25", "--prompt", "A"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("A") and "\x1b" not in done.stdout and done.stderr == ""


def test_a_bpe_run_resumes_and_samples_with_its_own_tokenizer(tmp_path, capsys):
    """A byte-level BPE run's checkpoint holds no characters: resume and `sample` both use its tokenizer.json."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    run_dir = tmp_path / "bpe-run"
    common = ["--no-ui", "--data", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300", *TINY]
    assert main([*common, "--run-dir", str(run_dir), "--epochs", "1"]) == 0
    assert main(["--no-ui", "--resume", str(run_dir), "--epochs", "2"]) == 0
    capsys.readouterr()
    assert sample(str(run_dir), "--prompt", "ROMEO: ü", "--tokens", "12", "--temperature", "0") == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO: ü")  # byte-level: a character the text never had still encodes
    assert len(text) > len("ROMEO: ü")


def test_on_a_terminal_control_characters_a_model_writes_are_shown_escaped():
    from tui_trainer.cli.sample import for_a_terminal

    assert for_a_terminal("ab\x1b[2Jc\x00d\n\té") == "ab\\x1b[2Jc\\x00d\n\té"


def test_a_temperature_below_the_epsilon_samples_greedily_and_says_so(trained_run, capsys):
    assert sample(str(trained_run), "--tokens", "60", "--temperature", "0") == 0
    greedy = capsys.readouterr().out
    assert sample(str(trained_run), "--tokens", "60", "--temperature", "1e-40") == 0
    captured = capsys.readouterr()
    assert captured.out == greedy
    assert captured.err.count("\n") == 1 and "below 1e-06" in captured.err and "greedily" in captured.err


@pytest.mark.parametrize("damaged, hint", [("best", "use --checkpoint latest"), ("latest", "use --checkpoint best"),
                                           ("both", "sample from another run dir")])
def test_a_corrupt_checkpoint_suggests_the_runs_other_one(damaged, hint, trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for which in (["best", "latest"] if damaged == "both" else [damaged]):
        path = run_dir / "checkpoints" / f"{which}.pt"
        path.write_bytes(path.read_bytes()[:1000])
    which = "latest" if damaged == "latest" else "best"
    assert sample(str(run_dir), "--checkpoint", which) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "corrupt or truncated" in captured.err and hint in captured.err and "resume" not in captured.err


# -- where the text goes: written as generated, kept when stopped ----------------------------------

class FailingOut(io.StringIO):
    """A stdout whose ``fail_at``-th write (1-based) raises ``error``; later ones succeed."""

    def __init__(self, error: BaseException, fail_at: int, terminal: bool = False) -> None:
        super().__init__()
        self.error, self.fail_at, self.terminal, self.writes = error, fail_at, terminal, 0

    def isatty(self) -> bool:
        return self.terminal

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes == self.fail_at:
            raise self.error
        return super().write(text)


def test_a_reader_that_goes_away_ends_the_generation_quietly(trained_run, monkeypatch, capsys):
    out = FailingOut(BrokenPipeError(32, "Broken pipe"), fail_at=5)
    monkeypatch.setattr(sys, "stdout", out)
    assert sample(str(trained_run), "--tokens", "100000") == 0  # `| head`: not 100,000 tokens for nobody
    monkeypatch.undo()
    assert out.writes == 5  # nothing more was written once the pipe was gone
    assert capsys.readouterr().err == ""


def test_a_write_that_fails_is_one_line_and_exit_1(trained_run, monkeypatch, capsys):
    import errno

    monkeypatch.setattr(sys, "stdout", FailingOut(OSError(errno.ENOSPC, "No space left on device"), fail_at=3))
    assert sample(str(trained_run), "--tokens", "200") == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: could not write the text: No space left on device")


def test_ctrl_c_on_a_terminal_keeps_the_text_and_ends_its_line(trained_run, monkeypatch):
    out = FailingOut(KeyboardInterrupt(), fail_at=12, terminal=True)
    monkeypatch.setattr(sys, "stdout", out)
    assert sample(str(trained_run), "--tokens", "500", "--prompt", "AB") == 130
    monkeypatch.undo()
    text = out.getvalue()
    assert text.startswith("AB") and len(text) > 5 and text.endswith("\n")  # the shell's prompt on its own line


def test_on_a_terminal_the_prompt_is_escaped_like_the_text(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab\x1b[31mcd\x07 " * 400, encoding="utf-8")  # a vocabulary that has ESC and BEL
    assert main(["--no-ui", "--data", str(corpus), "--run-dir", str(run_dir), "--epochs", "1", *TINY]) == 0
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert sample(str(run_dir), "--tokens", "5", "--prompt", "\x1b[31mab\x07") == 0
    monkeypatch.undo()
    shown = terminal.getvalue()
    assert shown.startswith("\\x1b[31mab\\x07") and "\x1b" not in shown and "\x07" not in shown


def tui_trainer_command() -> list[str]:
    script = Path(sys.executable).with_name("tui-trainer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tui_trainer"]


def test_sigterm_keeps_the_text_written_to_a_file_so_far(trained_run, tmp_path):
    import signal
    import time

    target = tmp_path / "out.txt"
    with target.open("w") as out:
        process = subprocess.Popen([*tui_trainer_command(), "sample", str(trained_run), "--tokens", "1000000",
                                    "--prompt", "A"], stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while target.stat().st_size < 200 and time.monotonic() < deadline:  # lines arrive as they are written
            time.sleep(0.1)
        assert target.stat().st_size >= 200, "no text reached the file while it was generated"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        process.kill()
    text = target.read_text(encoding="utf-8")
    assert text.startswith("A") and len(text) >= 200 and text.endswith("\n")
    assert process.stderr.read() == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_and_a_closed_stdout_each_get_one_line(trained_run):
    command = " ".join([*tui_trainer_command(), "sample", str(trained_run), "--tokens", "300"])
    for redirect, code, words in (("> /dev/full", 1, "No space left"), (">&-", 2, "stdout is closed")):
        done = subprocess.run(["bash", "-c", f"exec {command} {redirect}"], capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error:") and words in done.stderr


def test_stats_says_on_stderr_how_fast_the_tokens_came_and_leaves_stdout_alone(trained_run, capsys):
    assert sample(str(trained_run), "--prompt", "ROMEO:", "--tokens", "30", "--seed", "3") == 0
    plain = capsys.readouterr()
    assert sample(str(trained_run), "--prompt", "ROMEO:", "--tokens", "30", "--seed", "3", "--stats") == 0
    timed = capsys.readouterr()
    assert timed.out == plain.out  # the text is the same; the figures go to stderr only
    (line,) = timed.err.splitlines()
    assert line.startswith("stats: 30 tokens in ") and "the first (with the 6 prompt tokens) in " in line, line
    assert "tokens/s (KV cache, CPU)" in line, line
    assert sample(str(trained_run), "--tokens", "1", "--stats", "--no-kv-cache") == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("stats: 1 token in ") and line.endswith(" ms, with the 1 prompt token (no KV cache, CPU)")
    assert " 0.00 s" not in line, line  # (one token takes milliseconds: said so, not rounded to zero seconds)


class InterruptedFile(io.StringIO):
    """A file that Ctrl-C interrupts during its third write (as a user does a long sample > file)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt
        return super().write(text)


def test_stats_after_ctrl_c_start_a_line_of_their_own_after_the_terminals_echo(trained_run, monkeypatch):
    out, terminal = InterruptedFile(), Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", terminal)
    code = sample(str(trained_run), "--tokens", "50", "--stats")
    monkeypatch.undo()
    assert code == 130
    assert terminal.getvalue().startswith("\nstats: ") and terminal.getvalue().count("\n") == 2, terminal.getvalue()
