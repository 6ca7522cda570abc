"""Flags are spelt in full: a prefix is refused with the flag it most likely meant, and a typo
gets the nearest flag (argparse would silently take `--epoch 3` for `--epochs 3`)."""

import pytest

from tui_trainer.cli.argv import nearest_flag
from tui_trainer.cli.main import main


@pytest.mark.parametrize(("argv", "suggestion"), [
    (["--epoch", "3"], "did you mean --epochs?"),
    (["train", "--quik"], "did you mean --quick?"),
    (["--micro", "4"], "did you mean --micro-batch?"),
    (["sample", "--temp", "0.5", "runs/x"], "did you mean --temperature?"),
])
def test_a_flag_prefix_or_typo_is_refused_with_the_flag_meant(argv, suggestion, capsys, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and suggestion in err, err
    assert not any(tmp_path.iterdir())  # nothing created


def test_an_unknown_flag_with_nothing_close_is_named_without_a_guess(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--zzzzzz"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err


def test_nearest_flag_prefers_the_one_flag_a_prefix_begins():
    known = ["--epochs", "--eval-every", "--quick", "--micro-batch"]
    assert nearest_flag("--epoch", known) == "--epochs"
    assert nearest_flag("--epochs=3", known) == "--epochs"
    assert nearest_flag("--qiuck", known) == "--quick"
    assert nearest_flag("--nothing-like-it", known) is None
