"""--quick: a newcomer's first run, small enough to show the whole story in about a minute."""

from __future__ import annotations

import math
import re

import pytest

from tui_trainer.cli.main import config_from_args, main, parse_args
from tui_trainer.data.dataset import val_batch_limit


def test_quick_is_a_small_short_run_that_flags_still_override():
    cfg, given = config_from_args(parse_args(["--quick"]))
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (4, 128, 64)
    assert (cfg.train.micro_batch, cfg.train.accum, cfg.train.epochs) == (16, 4, 6)
    assert cfg.data.limit_train_batches == 150 and val_batch_limit(cfg.data) == 17
    assert given == {}  # a preset is no explicit flag (a resume would read it as one)
    cfg, given = config_from_args(parse_args(["--quick", "--epochs", "2", "--n-layer", "3"]))
    assert cfg.train.epochs == 2 and cfg.model.n_layer == 3 and cfg.model.n_embd == 128


def test_quick_with_resume_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["--no-ui", "--quick", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quick starts a new run" in err


@pytest.mark.slow
def test_quick_run_completes_with_falling_loss_and_a_diagnosis(tmp_path, capsys):
    assert main(["--no-ui", "--quick", "--run-dir", str(tmp_path / "run"), "--log-every", "off"]) == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"^epoch (\d)/6 train_loss=([\d.]+) val_loss=([\d.]+) .* diagnosis=(\w+)", out, re.M)
    assert len(epochs) == 6
    assert float(epochs[-1][1]) < float(epochs[0][1]) - 0.3  # the training loss fell
    assert float(epochs[-1][2]) < float(epochs[0][2])  # and so did the validation loss
    kinds = [kind for *_, kind in epochs]
    # Before a trend (3 epochs) the verdict is "learning" while the loss is above the high line
    # (0.6 x ln(vocab 65), the default underfit_ratio), "healthy" below it; a loss that falls like
    # this one is never "unstable".
    high_line = 0.6 * math.log(65)
    expected = ["learning" if min(float(train), float(val)) >= high_line else "healthy"
                for _, train, val, _ in epochs[:2]]
    assert kinds[:2] == expected and "unstable" not in kinds, kinds
