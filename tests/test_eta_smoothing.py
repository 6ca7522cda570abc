"""The ETA a person reads: measured in this session before it is shown, then a steady countdown
that moves only when the pace truly changes (analysis/eta.py: SmoothedEta)."""

import random

from tui_trainer.analysis.eta import MEASURE_SECONDS, MEASURE_STEPS, SmoothedEta


def test_nothing_is_shown_until_this_session_has_measured_its_pace():
    eta = SmoothedEta()
    assert eta.update(600.0, now=1.0, measured_seconds=1.0, measured_steps=5) is None
    assert eta.update(600.0, now=2.0, measured_seconds=MEASURE_SECONDS, measured_steps=MEASURE_STEPS - 1) is None
    assert eta.update(None, now=3.0, measured_seconds=60.0, measured_steps=50) is None
    assert eta.update(600.0, now=MEASURE_SECONDS, measured_seconds=MEASURE_SECONDS,
                      measured_steps=MEASURE_STEPS) == 600.0


def test_a_noisy_estimate_gives_a_clock_that_only_counts_down():
    rng = random.Random(0)
    eta = SmoothedEta()
    shown = []
    for second in range(6, 300):
        true_left = 600.0 - second
        raw = true_left * rng.uniform(0.9, 1.1)  # +-10% noise on every estimate
        shown.append(eta.update(raw, now=float(second), measured_seconds=float(second), measured_steps=second))
    assert all(b <= a for a, b in zip(shown, shown[1:])), "the shown ETA went up under mere noise"
    assert all(abs(s - (600.0 - t)) < 0.12 * (600.0 - t) for s, t in zip(shown, range(6, 300)))


def test_a_real_change_of_pace_is_followed_smoothly():
    eta = SmoothedEta()
    eta.update(100.0, now=10.0, measured_seconds=10.0, measured_steps=10)
    # from t=10 the machine gets twice as slow: the raw estimate doubles and stays there
    shown = [eta.update(2 * (100.0 - (t - 10)), now=float(t), measured_seconds=float(t), measured_steps=t)
             for t in range(11, 60)]
    steps = [b - a for a, b in zip(shown, shown[1:])]
    assert max(abs(d) for d in steps) < 10.0, "the ETA jumped instead of following"
    assert abs(shown[-1] - 2 * (100.0 - 49)) < 0.15 * 2 * (100.0 - 49), shown[-1]


def test_the_clock_stands_still_while_active_time_does():
    eta = SmoothedEta()
    eta.update(300.0, now=20.0, measured_seconds=20.0, measured_steps=10)
    assert eta.update(300.0, now=20.0, measured_seconds=20.0, measured_steps=10) == 300.0  # a pause: no time passes


def test_nothing_left_is_shown_at_once():
    assert SmoothedEta().update(0.0, now=0.5, measured_seconds=0.5, measured_steps=1) == 0.0
