"""What a cold newcomer trial of `view`, `sample` and `runs` found: the words of their errors, a run
dir that is only being set up, a requested save's confirmation, the live viewer's elapsed time."""

from __future__ import annotations

import pytest

from tui_trainer.cli.main import main


def exit_code(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exited:
        return exited.code


def test_view_without_a_run_dir_names_one_required(capsys):
    assert exit_code("view") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert "RUN_DIR" in err and "RUN_DIR, RUN_DIR" not in err  # (it read as two runs required)


def test_view_help_says_a_second_run_dir_compares(capsys):
    assert exit_code("view", "--help") == 0
    assert "compare" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["sample", "view"])
def test_a_file_given_as_the_run_dir_is_called_a_file(command, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert exit_code(command, str(empty)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{empty} is a file, not a run directory" in err
    assert "no such" not in err


def test_a_missing_run_dir_is_still_no_such_run_directory(tmp_path, capsys):
    assert exit_code("sample", str(tmp_path / "missing")) == 2
    assert "no such run directory" in capsys.readouterr().err
