"""Stable verdicts (hysteresis), the `learning` state, remedies that fit the schedule."""

from __future__ import annotations

import math

import pytest

from tui_trainer.analysis.diagnosis import Diagnosis, SchedulePosition, diagnose, verdicts_over
from tui_trainer.config import DiagnosisConfig

VOCAB = 65  # chance = ln(65) = 4.17; "high" = 0.6 x 4.17 = 2.50
CFG = DiagnosisConfig()


def kinds(train, val, **kwargs):
    return [v.kind for v in verdicts_over(train, val, VOCAB, **kwargs)]


def cosine(epochs: int, per_epoch: int = 1000, warmup: int = 500, peak: float = 1e-3):
    """Schedule positions at the end of each epoch of a run planned for ``epochs``."""
    return [SchedulePosition.at(e * per_epoch, peak, peak / 10, warmup, epochs * per_epoch)
            for e in range(1, epochs + 1)]


def test_near_chance_and_falling_is_learning_not_underfitting():
    """Issue 17's epoch 3: train 3.98 -> 3.86 -> 3.71 is near a uniform guess (ln 52 = 3.95) but falling fast."""
    verdict = diagnose([3.976, 3.864, 3.708], [3.917, 3.730, 3.602], 52)
    assert verdict.kind == "learning" and "keep training" in verdict.remedy
    assert "3.98 -> 3.86 -> 3.71" in verdict.reason


def test_one_flat_epoch_does_not_change_the_verdict_but_says_what_it_saw():
    train = [4.0, 3.6, 3.3, 3.05, 3.04, 3.03, 2.7, 2.4]  # one flat window at epoch 6, then it falls again
    found = verdicts_over(train, [t + 0.05 for t in train], VOCAB)
    assert [v.kind for v in found] == ["learning"] * len(train)
    assert found[5].pattern == "underfitting" and "underfitting if the next epoch agrees" in found[5].reason


def test_a_pattern_that_holds_two_epochs_changes_the_verdict_and_says_since_when():
    train = [4.0, 3.6, 3.3, 3.05, 3.04, 3.03, 3.025, 3.02]
    found = verdicts_over(train, [t + 0.05 for t in train], VOCAB)
    assert [v.kind for v in found] == ["learning"] * 6 + ["underfitting"] * 2
    change = found[6]
    assert change.since_epoch == 6 and change.reason.startswith("since epoch 6:") and "(was learning)" in change.reason
    assert found[7].since_epoch == 6 and "(was" not in found[7].reason


def test_confirm_epochs_is_configurable():
    train = [4.0, 3.6, 3.3, 3.05, 3.04, 3.03, 3.025, 3.02]
    val = [t + 0.05 for t in train]
    assert kinds(train, val, cfg=DiagnosisConfig(confirm_epochs=1))[5] == "underfitting"
    assert kinds(train, val, cfg=DiagnosisConfig(confirm_epochs=3))[6:] == ["learning", "underfitting"]


def test_underfitting_ends_at_once_when_train_falls_more_than_the_plateau_threshold():
    train = [4.0, 3.6, 3.3, 3.05, 3.04, 3.03, 3.025, 3.02, 2.95]  # the last epoch falls 2.3%
    assert kinds(train, [t + 0.05 for t in train])[-2:] == ["underfitting", "learning"]


def test_overfitting_stays_while_val_stays_away_from_its_best():
    train = [3.5, 3.0, 2.7, 2.6, 2.55, 2.5, 2.46, 2.43, 2.40]
    val = [3.6, 3.1, 2.8, 2.83, 2.86, 2.81, 2.85, 2.82, 2.88]  # best 2.80 at epoch 3; dips back, never below
    found = verdicts_over(train, val, VOCAB)
    assert [v.kind for v in found][4:] == ["overfitting"] * 5
    assert found[5].pattern != "overfitting"  # 2.81 alone is within the margin of the best: held all the same
    assert all(v.since_epoch == 4 for v in found[4:])
    # A new best val (and a gap that is not large) ends it at once: the pattern it stood on is gone.
    assert kinds(train + [2.38], val + [2.75])[-1] == "healthy"


def test_noise_just_above_the_best_val_is_not_overfitting():
    """val a hair above its best (within val_margin) while train falls: not "risen away"."""
    train = [3.5, 3.0, 2.6, 2.4, 2.3, 2.2]
    val = [3.6, 3.1, 2.70, 2.705, 2.702, 2.709]
    assert "overfitting" not in kinds(train, val)


def test_a_spike_is_unstable_at_once_and_stays_until_calm_is_confirmed():
    train = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4]
    val = [t + 0.05 for t in train]
    calm = [[t + 0.01 * math.sin(i) for i in range(20)] for t in train]
    spiky = [list(steps) for steps in calm]
    spiky[3][12] = train[3] + 1.5
    found = kinds(train, val, step_losses=spiky)
    assert found[2] == "healthy" and found[3] == "unstable"  # at once, whatever came before
    assert found[4] == "unstable" and found[5:] == ["healthy", "healthy"]  # calm for 2 epochs


def test_a_jump_of_a_nat_early_in_an_epoch_is_a_spike():
    """lr 3e-2 on the seed's model: 4.23 3.63 5.29 — too few steps for the 2x-median test, a clear blow-up."""
    verdict = diagnose([4.12], [3.50], VOCAB, step_losses=[4.23, 3.63, 5.29, 3.63, 7.94], first_step=1)
    assert verdict.kind == "unstable" and "step 3 loss 5.29" in verdict.reason


def test_plateau_in_the_schedule_tail_names_the_tail_and_not_a_higher_lr():
    train = [3.8, 3.2, 2.95, 2.85, 2.83, 2.82]
    found = verdicts_over(train, [t + 0.02 for t in train], VOCAB, schedules=cosine(6))
    last = found[-1]
    assert last.kind == "underfitting"
    assert "schedule in its tail" in last.remedy and "larger model" in last.remedy and "higher" not in last.remedy
    # In the tail the plateau cannot lift by itself: no second epoch needed to call it.
    assert found[-2].kind == "learning" and found[-2].pattern == "learning"


def test_still_learning_in_the_tail_says_more_epochs_would_help():
    train = [3.8, 3.2, 2.95, 2.82, 2.77, 2.74]  # issue 17's 6-epoch run: still 1% an epoch at the floor
    last = verdicts_over(train, [t - 0.02 for t in train], VOCAB, schedules=cosine(6))[-1]
    assert last.kind == "learning" and "tail" in last.remedy and "a longer run" in last.remedy


def test_a_higher_lr_is_suggested_only_when_flat_from_the_start_at_the_peak():
    flat = [4.05 - 0.01 * e for e in range(8)]
    val = [t + 0.02 for t in flat]
    at_peak = verdicts_over(flat, val, VOCAB, schedules=cosine(40))[-1]  # epoch 8 of 40: at the peak
    assert at_peak.kind == "underfitting" and "higher learning rate" in at_peak.remedy
    # Flat after a fall (capacity, not the lr): a larger model.
    fell = [4.0, 3.2, 2.9, 2.8, 2.79, 2.785, 2.78, 2.776]
    capacity = verdicts_over(fell, [t + 0.02 for t in fell], VOCAB, schedules=cosine(40))[-1]
    assert capacity.kind == "underfitting" and "learning rate" not in capacity.remedy
    assert "larger model" in capacity.remedy


def test_no_higher_lr_after_an_unstable_epoch():
    train = [4.0, 3.4, 3.33, 3.32, 3.315, 3.31]
    steps = [[4.2, 3.6, 5.3, 3.7, 3.6, 3.5]] + [[t] * 5 for t in train[1:]]
    last = verdicts_over(train, [t + 0.01 for t in train], VOCAB, step_losses=steps, schedules=cosine(40))[-1]
    assert last.unstable_epoch == 1 and "lower the learning rate" in last.remedy
    assert "higher" not in last.remedy


def test_no_underfitting_during_warm_up():
    flat = [4.1, 4.09, 4.085, 4.08, 4.078]
    schedules = [SchedulePosition.at(e * 100, 1e-3, 1e-4, 10_000, 20_000) for e in range(1, 6)]
    last = verdicts_over(flat, flat, VOCAB, schedules=schedules)[-1]
    assert last.kind == "learning" and "warming up" in last.remedy


def test_every_remedy_fits_one_banner_line_at_80_columns():
    from tui_trainer.ui.widgets.diagnosis import FRAME
    line_room = 80 - FRAME  # the banner at 80 columns
    runs = [([4.05 - 0.01 * e for e in range(8)], cosine(40)),
            ([3.8, 3.2, 2.95, 2.85, 2.83, 2.82], cosine(6)),
            ([3.8, 3.2, 2.95, 2.82, 2.77, 2.74], cosine(6)), ([4.1, 4.09, 4.085], cosine(400, warmup=10**6))]
    remedies = [verdicts_over(train, train, VOCAB, schedules=s)[-1].remedy for train, s in runs]
    remedies.append(verdicts_over([3.5, 2.9, 2.5, 2.2, 2.0, 1.8, 1.6], [3.6, 3.0, 2.6, 2.4, 2.5, 2.6, 2.7] * 1,
                                  VOCAB)[-1].remedy)
    steps = [[4.2, 3.6, 5.3, 3.7, 3.6, 3.5]] + [[t] * 5 for t in [3.4, 3.33, 3.32, 3.315, 3.31]]
    remedies.append(verdicts_over([4.0, 3.4, 3.33, 3.32, 3.315, 3.31], [3.5] * 6, VOCAB, step_losses=steps)[-1].remedy)
    assert {"warming up", "tail", "higher learning rate", "regularization", "lower the learning rate"} <= {
        word for word in ("warming up", "tail", "higher learning rate", "regularization", "lower the learning rate")
        if any(word in r for r in remedies)}  # every kind of remedy is measured
    assert all(len("remedy: " + r) <= line_room for r in remedies), remedies


def test_overfitting_remedy_gives_the_gap_and_the_epochs_since_the_best():
    train = [3.5, 2.9, 2.5, 2.2, 2.0, 1.8, 1.6]
    val = [3.6, 3.0, 2.6, 2.4, 2.5, 2.6, 2.7]
    last = verdicts_over(train, val, VOCAB)[-1]
    assert last.kind == "overfitting"
    assert f"gap {2.7 / 1.6 - 1:.0%}" in last.remedy and "3 epochs past the best val" in last.remedy
    assert "more data or regularization" in last.remedy


@pytest.mark.parametrize("state", [
    Diagnosis("overfitting", "since epoch 4: ...", "r", 4, 6, "overfitting", 4, None).to_state(),
    ["unstable", "step 3 loss nan"],  # what checkpoints before issue 17 hold
    None,
])
def test_verdict_state_round_trips_and_old_checkpoints_load(state):
    restored = Diagnosis.from_state(state)
    if state is None:
        assert restored is None
    elif isinstance(state, list):
        assert (restored.kind, restored.reason, restored.since_epoch) == ("unstable", "step 3 loss nan", None)
        assert "lower the learning rate" in restored.remedy
    else:
        assert restored.to_state() == state


def test_a_verdict_made_from_a_restored_state_equals_the_uninterrupted_one():
    train = [3.5, 2.9, 2.5, 2.2, 2.0, 1.85, 1.7, 1.6]
    val = [3.6, 3.0, 2.6, 2.4, 2.5, 2.55, 2.6, 2.65]
    straight = verdicts_over(train, val, VOCAB)
    restored = Diagnosis.from_state(straight[5].to_state())
    assert diagnose(train[:7], val[:7], VOCAB, previous=restored) == straight[6]


def test_schedule_position_knows_warm_up_peak_and_tail():
    early, mid, late = (SchedulePosition.at(t, 1e-3, 1e-4, 100, 1000) for t in (50, 400, 950))
    assert not early.peak_reached and early.decayed() == 0.0
    assert mid.peak_reached and not mid.in_tail(CFG.schedule_tail)
    assert late.in_tail(CFG.schedule_tail) and late.decayed() > 0.95
    constant = SchedulePosition.at(950, 1e-3, 1e-3, 100, 1000)  # min_lr_ratio 1: no tail to be in
    assert not constant.in_tail(CFG.schedule_tail)


def test_a_schedule_that_ended_inside_its_warm_up_is_at_its_floor_not_warming_up():
    # A --time-budget plan shorter than the warm-up: the lr is at its floor once the plan's tokens
    # are seen (figures.lr_for), so the run is done with its schedule, not warming up.
    ended = SchedulePosition.at(1920, 3e-3, 3e-4, 2560, 1920, lr=3e-4)
    assert ended.peak_reached and ended.in_tail(CFG.schedule_tail)
    train, val = [4.2, 4.0], [4.2, 4.0]
    remedy = diagnose(train, val, VOCAB, schedule=ended).remedy
    assert "warming up" not in remedy and "schedule in its tail (lr 3.0e-04)" in remedy
    still = SchedulePosition.at(1152, 3e-3, 3e-4, 2560, 2000)  # before the plan's end: still warming
    assert not still.peak_reached and "warming up" in diagnose(train, val, VOCAB, schedule=still).remedy


def test_healthy_at_the_end_of_its_schedule_says_a_longer_run_would_go_further():
    """A cold trial's finished budget run: lr at its floor, both losses falling, and the remedy said
    only "keep training" (there is no training left to keep doing)."""
    train, val = [3.0, 2.6, 2.3, 2.1], [3.05, 2.65, 2.36, 2.17]
    ended = SchedulePosition.at(1000, 4e-3, 4e-4, 100, 1000, lr=4e-4)
    verdict = diagnose(train, val, VOCAB, schedule=ended)
    assert verdict.kind == "healthy"
    assert verdict.remedy == "schedule in its tail (lr 4.0e-04): a longer run would go further"
    assert len(verdict.remedy) <= 68  # one banner line at 80 columns
    mid = SchedulePosition.at(400, 4e-3, 4e-4, 100, 1000)  # at the peak, mid-run: keep training
    assert diagnose(train, val, VOCAB, schedule=mid).remedy == "keep training"
