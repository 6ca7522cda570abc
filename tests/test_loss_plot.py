"""The loss chart's choices: which y-range, which ticks, which legend."""

from __future__ import annotations

import math

from tui_trainer.ui.view import EpochPoint
from tui_trainer.ui.widgets.loss_plot import LossPlot, legend, nice_ticks, tick_labels


def falling_run(steps: int = 100) -> tuple[list[int], list[float]]:
    xs = list(range(1, steps + 1))
    return xs, [1.5 + 3.0 * math.exp(-x / 4) for x in xs]


def test_the_first_steps_do_not_set_the_top_but_every_epoch_point_is_shown():
    xs, losses = falling_run()
    early_epoch = EpochPoint(1, 5, 3.0, 2.9)  # a short first epoch ends inside the first 10% of steps
    late_epoch = EpochPoint(2, 100, 1.52, 1.6)
    low, high = LossPlot()._limits(xs, losses, losses, [early_epoch, late_epoch], xs)
    assert high >= 3.0 and low <= 1.5
    assert high < losses[0]  # step 1's loss (3.84) is still off the top: it is not the interesting part
    low, high = LossPlot()._limits(xs, losses, losses, [late_epoch], xs)
    assert high < 2.0  # without an early epoch point the range follows the later steps


def test_y_ticks_are_round_numbers_inside_the_range():
    ticks = nice_ticks(1.31, 3.68, 5)
    assert ticks == [1.5, 2.0, 2.5, 3.0, 3.5]
    assert tick_labels(ticks) == ["1.5", "2.0", "2.5", "3.0", "3.5"]
    assert tick_labels(nice_ticks(0.0123, 0.0189, 3)) == ["0.014", "0.016", "0.018"]
    assert nice_ticks(2.0, 2.0, 4) == [2.0]
    assert nice_ticks(1.147, 4.616, 3) == [2, 3, 4]  # as many as asked for, not fewer
    for low, high in [(1.2, 1.925), (1.24, 1.385), (0.9, 1.1), (0.0123, 0.0189)]:  # a short chart asks for 2
        assert len(nice_ticks(low, high, 2)) >= 2 and all(low <= t <= high for t in nice_ticks(low, high, 2))
    labels = tick_labels(nice_ticks(8.26e8, 8.77e8, 10))
    assert len(set(labels)) == len(labels) > 2
    assert tick_labels(nice_ticks(1e9, 5e10, 4)) == ["2e+10", "4e+10"]  # a diverged run's scale


def test_legend_names_the_step_line_it_draws():
    assert "train/step EMA" in legend(smooth=True) and "val/epoch" in legend(smooth=True)
    assert "EMA" not in legend(smooth=False)


def test_smoothed_step_line_starts_at_the_first_loss_and_survives_a_skipped_step():
    """Bias-corrected, as Adam and TensorBoard: no drag toward 0 (or toward step 1) at the start."""
    plot = LossPlot()
    xs, losses = falling_run(30)
    plot._extend_ema(losses[:10])
    assert plot._ema[0] == losses[0]
    assert all(low <= ema <= high for ema, low, high in zip(plot._ema, losses[:10], [losses[0]] * 10))
    assert plot._ema[9] < losses[0] - 0.5 * (losses[0] - losses[9])  # it keeps up, not 0.65 of the way back
    plot._extend_ema(losses[:10] + [float("nan")] + losses[11:])  # a skipped step's NaN loss
    assert all(math.isfinite(ema) for ema in plot._ema) and len(plot._ema) == 30
