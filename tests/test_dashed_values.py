"""A value that begins with '-' (``--time-budget -3m``, ``--lr -1e-3``, ``--prompt "-x"``) is the
option's value, never argparse's "expected one argument": the option's own check then names the
problem and the fix in one line, exit 2."""

import subprocess
import sys

import pytest

from tui_trainer.cli.main import main


def _refused(argv: list[str], capsys, missing_value_ok: bool = False) -> str:
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and (missing_value_ok or "expected one argument" not in err), err
    return err


@pytest.mark.parametrize("argv", [["--time-budget", "-3m"], ["--time-budget=-3m"]])
def test_a_negative_time_budget_says_a_budget_is_positive(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _refused(["--no-ui", "--run-dir", str(tmp_path / "r"), *argv], capsys)
    assert "--time-budget -3m" in err and "positive" in err and "--time-budget 3m" in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("value", "words"), [("0", "positive"), ("abc", "not a duration")])
def test_a_zero_or_wordy_time_budget_is_one_line(value, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _refused(["--no-ui", "--run-dir", str(tmp_path / "r"), "--time-budget", value], capsys)
    assert "--time-budget" in err and words in err, err


@pytest.mark.parametrize(("argv", "words"), [
    (["--lr", "-1e-3"], "--lr must be a positive number"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--dropout", "-.5"], "--dropout must be in [0, 1)"),
    (["--log-every", "-5s"], "--log-every -5s is not an interval"),
    (["--epochs", "-x"], "--epochs: invalid int value: '-x'"),
])
def test_any_option_given_a_dashed_value_names_the_option(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _refused(["--no-ui", "--run-dir", str(tmp_path / "r"), *argv], capsys)
    assert words in err, err


def test_a_flag_still_is_a_flag_after_an_option_missing_its_value(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _refused(["--no-ui", "--data", "--epochs", "3"], capsys, missing_value_ok=True)
    assert "--data: expected one argument" in err, err


def test_the_real_process_says_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tui_trainer", "--no-ui", "--time-budget", "-3m",
                             "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "positive" in result.stderr, result.stderr
