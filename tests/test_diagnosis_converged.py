"""`converged`: train and val flat (each fell less than ``plateau_improvement`` in every epoch of the
trend window) while the schedule is in its tail (``schedule_tail``): the lr only falls from here, so
the run has done what it can at this size and lr — not `healthy`, whose remedy is "keep training"."""

from __future__ import annotations

from tui_trainer.analysis.diagnosis import SchedulePosition, diagnose, verdicts_over
from tui_trainer.config import DiagnosisConfig

VOCAB = 65  # chance = ln(65) = 4.17; "high" = 0.6 x 4.17 = 2.50: these losses are below it
CFG = DiagnosisConfig()


def cosine(epochs: int, per_epoch: int = 1000, warmup: int = 500, peak: float = 1e-3):
    """Schedule positions at the end of each epoch of a run planned for ``epochs`` (floor = peak / 10)."""
    return [SchedulePosition.at(e * per_epoch, peak, peak / 10, warmup, epochs * per_epoch)
            for e in range(1, epochs + 1)]


# Falls fast, then flat for the last four epochs (each < 1%), val flat beside it.
TRAIN = [2.4, 2.0, 1.8, 1.7, 1.62, 1.615, 1.612, 1.61, 1.609]
VAL = [2.45, 2.08, 1.9, 1.82, 1.76, 1.758, 1.757, 1.757, 1.756]


def test_flat_losses_at_the_lr_floor_are_converged_with_the_remedy_to_grow_or_stop():
    found = verdicts_over(TRAIN, VAL, VOCAB, schedules=cosine(len(TRAIN)))
    last = found[-1]
    assert last.kind == "converged", [v.kind for v in found]
    assert "flat over 3 epochs" in last.reason and "lr" in last.reason
    assert "more data or a larger model" in last.remedy and "stop" in last.remedy
    assert last.since_epoch is not None and last.reason.startswith(f"since epoch {last.since_epoch}:")


def test_the_same_losses_with_the_lr_still_high_are_healthy_not_converged():
    """Flat at the peak lr is not convergence: the decay still to come usually lowers the loss."""
    found = verdicts_over(TRAIN, VAL, VOCAB, schedules=cosine(40))  # a 40-epoch plan: nowhere near its tail
    assert [v.kind for v in found][-1] == "healthy"
    assert verdicts_over(TRAIN, VAL, VOCAB)[-1].kind == "healthy"  # (no schedule known: never converged)


def test_a_loss_still_falling_in_the_tail_is_healthy():
    train = [2.4, 2.0, 1.8, 1.7, 1.62, 1.58, 1.54, 1.5, 1.46]  # ~2.5%/epoch to the end
    found = verdicts_over(train, [t + 0.1 for t in train], VOCAB, schedules=cosine(len(train)))
    # (at the end of the schedule "keep training" has nothing left to keep doing: a longer run would)
    assert found[-1].kind == "healthy" and found[-1].remedy.endswith("a longer run would go further")


def test_the_tail_and_plateau_thresholds_are_the_diagnosis_config_s():
    schedules = cosine(len(TRAIN))
    # schedule_tail 1.0: only the floor itself is the tail — the last epoch ends there.
    assert diagnose(TRAIN, VAL, VOCAB, DiagnosisConfig(schedule_tail=1.0), schedule=schedules[-1]).kind == "converged"
    mid = schedules[len(TRAIN) // 2]  # half way down the cosine: not the tail at 0.75
    assert diagnose(TRAIN, VAL, VOCAB, CFG, schedule=mid).kind == "healthy"
    # A plateau threshold below the last epochs' falls: they are not flat.
    assert diagnose(TRAIN, VAL, VOCAB, DiagnosisConfig(plateau_improvement=0.001),
                    schedule=schedules[-1]).kind == "healthy"


def test_converged_ends_when_the_loss_falls_again():
    train = [*TRAIN, 1.55]  # the last epoch falls 3.7%
    val = [*VAL, 1.70]
    found = verdicts_over(train, val, VOCAB, schedules=cosine(len(train)))
    assert [v.kind for v in found][-2:] == ["converged", "healthy"]


def test_high_and_flat_in_the_tail_stays_underfitting():
    train = [4.0, 3.6, 3.3, 3.05, 3.04, 3.03, 3.025, 3.02]
    found = verdicts_over(train, [t + 0.05 for t in train], VOCAB, schedules=cosine(len(train)))
    assert found[-1].kind == "underfitting"
