"""Constant-then-decay (warm-up, hold, decay; "WSD"): ``optim.lr_hold`` is the fraction of the run
after the warm-up that the learning rate holds its peak before the cosine takes it to the floor.
0 is today's cosine from the end of the warm-up, bit for bit; fine-tuning holds 0.8 by default
(nanoGPT's finetune_shakespeare keeps its small lr constant)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from tui_trainer.analysis.schedule import lr_at
from tui_trainer.config import RunConfig
from tui_trainer.config_checks import validate
from tui_trainer.errors import UserError
from tui_trainer.rundir.init_source import FINETUNE_LR_HOLD

PEAK, FLOOR, WARMUP, TOTAL = 1e-3, 1e-4, 1_000, 11_000


def test_no_hold_is_the_cosine_it_always_was_bit_for_bit():
    for t in range(0, TOTAL + 500, 37):
        assert lr_at(t, PEAK, FLOOR, WARMUP, TOTAL, hold=0.0) == lr_at(t, PEAK, FLOOR, WARMUP, TOTAL)
    anchor = (4_000, 6e-4)  # a resume's anchor too
    for t in range(0, TOTAL, 37):
        assert lr_at(t, PEAK, FLOOR, WARMUP, TOTAL, anchor, hold=0.0) == lr_at(t, PEAK, FLOOR, WARMUP, TOTAL, anchor)


def test_a_hold_keeps_the_peak_then_decays_to_the_floor_at_the_end():
    hold = 0.8  # decay starts at 1,000 + 0.8 x 10,000 = 9,000
    assert lr_at(500, PEAK, FLOOR, WARMUP, TOTAL, hold=hold) == lr_at(500, PEAK, FLOOR, WARMUP, TOTAL)  # warm-up
    assert all(lr_at(t, PEAK, FLOOR, WARMUP, TOTAL, hold=hold) == PEAK for t in range(WARMUP, 9_001, 100))
    tail = [lr_at(t, PEAK, FLOOR, WARMUP, TOTAL, hold=hold) for t in range(9_001, TOTAL, 100)]
    assert tail[0] < PEAK and all(b < a for a, b in pairwise(tail))
    assert lr_at(10_000, PEAK, FLOOR, WARMUP, TOTAL, hold=hold) == pytest.approx((PEAK + FLOOR) / 2)  # mid-decay
    assert lr_at(TOTAL, PEAK, FLOOR, WARMUP, TOTAL, hold=hold) == FLOOR
    # no warm-up (fine-tuning): the peak from the first token
    assert lr_at(0, PEAK, FLOOR, 0, TOTAL, hold=hold) == PEAK


def test_an_anchor_inside_the_hold_holds_its_rate_until_the_decay_begins():
    # a resume that moved the end while the rate was held: it stays where it was, then decays from there
    hold, anchor = 0.5, (3_000, PEAK)
    longer = 21_000  # the new end: decay starts at 1,000 + 0.5 x 20,000 = 11,000
    assert lr_at(10_999, PEAK, FLOOR, WARMUP, longer, anchor, hold=hold) == PEAK
    assert lr_at(16_000, PEAK, FLOOR, WARMUP, longer, anchor, hold=hold) == pytest.approx((PEAK + FLOOR) / 2)
    # an anchor past the decay's start decays on from its own rate
    late = (15_000, 5e-4)
    assert lr_at(15_000, PEAK, FLOOR, WARMUP, longer, late, hold=hold) == pytest.approx(5e-4)
    assert lr_at(longer, PEAK, FLOOR, WARMUP, longer, late, hold=hold) == FLOOR


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_a_hold_outside_zero_to_one_is_refused_in_one_line(bad):
    cfg = RunConfig().replace(optim=RunConfig().optim.__class__(lr_hold=bad))
    with pytest.raises(UserError, match="lr[-_]hold"):
        validate(cfg)


def test_fine_tuning_holds_most_of_the_run():
    assert 0.5 <= FINETUNE_LR_HOLD < 1.0
